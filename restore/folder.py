"""``restore.py --input DIR`` or ``--clean DIR``: every image of a folder, restored in batches, resumably, on one
or many processes.

Every image is read, degraded or matched with its reference and mask, and checked first: one that is unreadable or
without its reference or mask stops the run with one line, before anything is written. Images over
:data:`restore.tiled_cli.WHOLE_IMAGE_MAX_PIXELS` output pixels (every image, with ``--tile``) go tile by tile after
the others, one at a time, each through :func:`restore.predict.restore_tiled` on every process. The others, of one
shape and one noise level, are restored together, ``--images-per-batch`` at a time, each
stopping on its own residual (:meth:`restore.predict.TiledJPMAP._jpmap_per_tile`: an image's result does not
depend on the images batched with it). The batches run in a Lightning predict loop: ``--devices N`` (and
``--num-nodes``) split them between processes with DDP. Each image's outputs are written, atomically, as soon as
its batch is done; after an interruption the same command resumes with the images that have no record yet.

OUT/
  restored/NAME.png      NAME: the image's path under the folder without its suffix (16-bit inputs: 16-bit PNGs)
  degraded/NAME.png      the synthetic observation (``--clean DIR`` alone)
  records/NAME.json      the image's figures, written after its images: an image with a record is done
  metrics.csv            one row per image; metrics.json: the means, the settings and each noise level's solver
  run.json               the folder's images and the settings; a rerun into OUT with others is refused
  tb/rank{r}/            with --tensorboard: each image's figures as it is done, and the first images

``--clean DIR`` alone degrades each image as ``benchmarks/quality.py`` does: one generator seeded ``--seed`` + the
image's index in the sorted folder draws the random mask (inpainting), then the noise. ``--input DIR`` holds real
observations; ``--clean DIR2`` then gives their references and ``--mask DIR3`` their masks (inpainting), matched
by NAME (one ``--mask FILE`` serves every image). ``--noise-std auto`` estimates each image's noise (on every
process, while the images are checked) and each image gets the preset's setting at its level; images of different
levels are never batched together.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.images import DataError, atomic_write_bytes, list_images, read_image_with_info, write_image

from .baselines import adam_joint, tikhonov
from .cli import (UsageError, as_observation, bayer_planes, check_colour_clean, clean_for_scale, degrade_clean,
                  from_prior_channels, make_operator, metrics_of, noise_255, pick_device, read_mask, reference_for,
                  solution_hw, solver_config, to_prior_channels, validate_flags, validate_solver_flags)
from .jpmap import JPMAPConfig
from .operators import Inpainting, prior_operator, sigma_from_255
from .predict import (TiledJPMAP, build_operator, check_run, file_id, is_rank_zero, masks_per_channel,
                      operator_spec, quiet_lightning)
from .tiled_cli import WHOLE_IMAGE_MAX_PIXELS, tiled_kwargs

FIELDS = ("name", "height", "width", "noise_std", "psnr", "ssim", "degraded_psnr", "tikhonov_psnr", "iterations",
          "diverged", "seconds")  # metrics.csv's columns
TB_IMAGES = 16  # --tensorboard: the restorations of the folder's first images are logged too
NOT_SETTINGS = ("out", "no_progress", "devices", "accelerator", "strategy", "num_nodes", "images_per_batch",
                "device", "tiles_per_batch", "keep_tiles", "max_pixels", "tensorboard")  # results do not depend on them


@dataclass(frozen=True)
class Item:
    """One image of the folder: ``index`` in the sorted folder (its degradation's seed is ``--seed`` + index),
    ``name`` (its path under the folder without suffix), the file ``read`` (``--input``'s, or ``--clean``'s when
    degrading it), its ``clean`` reference and ``mask`` files if any, the read image's [C, H, W] ``shape`` (for
    ``--input`` the observation's: a grey image stored in colour has C = 1) and ``bit_depth``, its mask's channels
    (0 without one), its noise std on the 0-255 scale, and whether it is restored tile by tile."""

    index: int
    name: str
    read: Path
    clean: Path | None
    mask: Path | None
    shape: tuple[int, int, int]
    bit_depth: int
    mask_channels: int
    noise: float
    tiled: bool = False  # restored tile by tile (--tile given, or over WHOLE_IMAGE_MAX_PIXELS output pixels)


def _named(folder: Path, flag: str) -> dict[str, Path]:
    """The images under ``folder`` by NAME (path under it, no suffix); two files of one NAME are refused."""
    try:
        files = list_images(folder)
    except DataError as err:
        raise UsageError(f"{flag}: {err}") from None
    named: dict[str, Path] = {}
    for f in files:
        name = f.relative_to(folder).with_suffix("").as_posix()
        if name in named:
            raise UsageError(f"{flag}: {named[name].name} and {f.name} both give the name {name!r}; rename one")
        named[name] = f
    return named


def _read(path: Path, args: argparse.Namespace) -> tuple[Tensor, int]:
    image, info = read_image_with_info(path, max_pixels=args.max_pixels)
    return image, 16 if info.bit_depth == 16 else 8


def observe(args: argparse.Namespace, item: Item, image: Tensor | None = None) -> tuple[Tensor, Tensor | None, object]:
    """(y [C, h, w], reference [C, H, W] or None, operator) of one image: its observation (``--input``), or its
    clean image degraded with the generator seeded ``--seed`` + its index (``--clean`` alone)."""
    image = _read(item.read, args)[0] if image is None else image
    sigma = sigma_from_255(item.noise)
    if args.input is not None:
        image = as_observation(args, image, item.read.name)
        clean = None if item.clean is None else _read(item.clean, args)[0]
        hw = tuple(clean.shape[-2:]) if clean is not None else solution_hw(args, tuple(image.shape[-2:]))
        operator = make_operator(args, hw, sigma, have_observation=True, mask_file=item.mask)
        return image, None if clean is None else reference_for(args, operator, image, clean), operator
    check_colour_clean(args, image, item.read.name)
    clean = clean_for_scale(args, image)
    generator = torch.Generator().manual_seed(args.seed + item.index)
    operator = make_operator(args, tuple(clean.shape[-2:]), sigma, have_observation=False, mask_file=item.mask,
                             generator=generator)
    y, reference = degrade_clean(operator, clean, generator)
    return y, reference, operator


def plan(args: argparse.Namespace) -> tuple[list[Item], dict[float, object], dict]:
    """Checks the folder run's flags and every image (see the module docstring); returns the images, the solver
    setting (JPMAPConfig or AdamConfig) of each noise level and the operator's spec without its sigma (each batch's
    own; :func:`restore.predict.operator_spec`)."""
    folder, flag = (args.input, "--input") if args.input is not None else (args.clean, "--clean")
    other = args.clean if args.input is not None else None
    if not folder.is_dir() or (other is not None and not other.is_dir()):
        raise UsageError("--input and --clean: give two folders (images matched by name) or two files")
    images = _named(folder, flag)
    references = _named(other, "--clean") if other is not None else {}
    masks: dict[str, Path] = {}
    if args.operator == "inpaint" and args.mask is not None and args.mask.is_dir():
        masks = _named(args.mask, "--mask")
    elif args.operator == "inpaint" and args.input is not None and args.mask is None:
        raise UsageError("--operator inpaint with --input needs --mask: a folder of masks named as the images, or "
                         "one file for all")
    items = []
    for index, (name, path) in enumerate(images.items()):
        for table, what in ((references, "--clean"), (masks, "--mask")):
            if table and name not in table:
                raise UsageError(f"{what} has no image named {name!r} (for {path.name}); give one for every image")
        mask = masks.get(name, args.mask if args.operator == "inpaint" else None)
        image, bit_depth = _read(path, args)
        out_hw = solution_hw(args, tuple(image.shape[-2:])) if args.input is not None else image.shape[-2:]
        tiled = args.tile is not None or out_hw[0] * out_hw[1] > WHOLE_IMAGE_MAX_PIXELS
        if tiled and args.method != "jpmap":
            raise UsageError(f"{path.name} restores to {out_hw[0]}x{out_hw[1]} pixels, which go tile by tile, and "
                             "tiled restoration runs JPMAP only; drop --method adam (or the image)")
        noise = args.noise_std if args.noise_std != "auto" else _estimate(args, image, mask, path)
        item = Item(index, name, path, references.get(name), mask, tuple(image.shape), bit_depth, 0, noise, tiled)
        y, _, operator = observe(args, item, image)  # every refusal now, before anything is written
        shape = tuple(y.shape) if args.input is not None else item.shape  # batched by the observation's channels
        items.append(replace(item, shape=shape,
                             mask_channels=operator.mask.shape[-3] if isinstance(operator, Inpainting) else 0))
    configs = {}
    for noise in sorted({it.noise for it in items}):
        one = argparse.Namespace(**vars(args))
        one.noise_std = noise
        validate_solver_flags(one)
        configs[noise] = solver_config(one)
    spec = {k: v for k, v in operator_spec(operator).items() if k != "sigma"}  # the same for every image
    return items, configs, spec


def _estimate(args: argparse.Namespace, image: Tensor, mask_file: Path | None, path: Path) -> float:
    """``--noise-std auto`` for one image of the folder (0-255; its observed pixels with a mask; a mosaic's four
    one-colour phases for demosaicing)."""
    if args.operator == "demosaic":
        return noise_255(bayer_planes(image, args.bayer), source=path.name)
    mask = None if mask_file is None else read_mask(mask_file, tuple(image.shape[-2:])).amin(0, keepdim=True)[None]
    return noise_255(image[None], mask, source=path.name)


def batches_of(items: list[Item], per_batch: int) -> list[list[int]]:
    """Indices of ``items`` in batches of at most ``per_batch`` images of one shape, mask and noise level."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for k, it in enumerate(items):
        groups[(it.shape, it.mask_channels, it.noise)].append(k)
    return [g[i:i + per_batch] for g in groups.values() for i in range(0, len(g), per_batch)]


class FolderData(L.LightningDataModule):
    """Batches of the images without a record in ``out/records`` (listed in ``setup``, on every rank between
    Lightning's setup barriers, before any record is written), padded by repeating batches up to the world size
    (a repeated image is rewritten with the same values, atomically). A batch: {"items": [indices], "y":
    [B, C, h, w], "reference": [B, C, H, W] or absent, "mask": [B, Cm, H, W] or absent}."""

    def __init__(self, args: argparse.Namespace, items: list[Item]) -> None:
        super().__init__()
        self.args, self.items = args, items
        self.batches: list[list[int]] = []

    def setup(self, stage: str) -> None:
        records = self.args.out / "records"
        todo = [k for k, it in enumerate(self.items) if not it.tiled and not (records / f"{it.name}.json").is_file()]
        batches = [[todo[j] for j in b] for b in batches_of([self.items[k] for k in todo], self.args.images_per_batch)]
        world = self.trainer.world_size if self.trainer is not None else 1
        k = 0
        while batches and len(batches) < world:
            batches.append(batches[k])
            k += 1
        self.batches = batches

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Batches(self.args, self.items, self.batches), batch_size=1, shuffle=False,
                          collate_fn=_only)


def _only(batch: list[dict]) -> dict:
    return batch[0]  # an item of _Batches is a batch already


class _Batches(Dataset):
    def __init__(self, args: argparse.Namespace, items: list[Item], batches: list[list[int]]) -> None:
        self.args, self.items, self.batches = args, items, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict:
        seen = [observe(self.args, self.items[i]) for i in self.batches[k]]
        batch = {"items": list(self.batches[k]), "y": torch.stack([y for y, _, _ in seen])}
        if seen[0][1] is not None:
            batch["reference"] = torch.stack([ref for _, ref, _ in seen])
        if isinstance(seen[0][2], Inpainting):
            batch["mask"] = torch.cat([op.mask.reshape(-1, *op.mask.shape[-3:]) for _, _, op in seen])
        return batch


class FolderJPMAP(TiledJPMAP):
    """The restoration of a folder's batches: JPMAP through TiledJPMAP's per-item loop (each image stopping on its
    own residual) with the batch's noise level and setting, or the Adam baseline; then each image's figures against
    its reference, and a Wiener (Tikhonov) baseline's."""

    def __init__(self, prior_path: str, spec: dict, items: list[Item], configs: dict[float, object],
                 batch_images: int) -> None:
        first = next(iter(configs.values()))
        super().__init__(prior_path, first if isinstance(first, JPMAPConfig) else JPMAPConfig(), sigma=1.0, **spec,
                         batch_tiles=batch_images)  # the batch's sigma and setting replace these in predict_step
        self.spec, self.items, self.configs = spec, items, configs

    def _prior_operator(self, operator, mask: Tensor | None, sigma: float, channels: int):
        """The batch's operator on the prior's batch (:func:`restore.cli.to_prior_channels`): inpainting's masks
        follow colour images split into grey ones, channel by channel; grey images through a colour prior are
        :func:`restore.operators.prior_operator`'s."""
        if mask is not None:
            if self.prior.image_channels == 1 and channels > 1:
                mask = masks_per_channel(mask, channels)
            operator = Inpainting(mask, sigma)
        return operator

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        items = [self.items[i] for i in batch["items"]]
        y, mask, reference = batch["y"].float(), batch.get("mask"), batch.get("reference")
        noise = items[0].noise
        config, sigma = self.configs[noise], sigma_from_255(noise)
        spec = {**self.spec, "sigma": sigma}
        operator = build_operator(**spec)
        mask = None if mask is None else mask.float()
        plain_op = self._prior_operator(operator, mask, sigma, y.shape[1]).to(y.device)  # Wiener's
        prior_op = prior_operator(plain_op, y.shape[1], self.prior.image_channels)  # Adam's
        y_prior = to_prior_channels(y, self.prior.image_channels)  # Adam's and Wiener's batch
        start = time.perf_counter()
        if isinstance(config, JPMAPConfig):
            self.config, self.sigma = config, sigma
            self.operator = None if operator is None else operator.to(y.device)
            x = self._solve(y, mask)
            iterations, diverged = self.last_iterations.tolist(), self.last_diverged.tolist()
        else:
            with torch.enable_grad():  # the predict loop runs under no_grad; Adam needs J's gradient
                result = adam_joint(y_prior, prior_op, self.prior, config)
            x = from_prior_channels(prior_op.frame(result.estimate.detach()), y.shape[1])
            iterations, diverged = [config.max_iters] * len(items), [False] * len(items)
        seconds = (time.perf_counter() - start) / len(items)
        finite = torch.isfinite(x).flatten(1).all(1).tolist()
        if not all(finite):
            bad = items[finite.index(False)].read
            raise RuntimeError(f"{bad.name} restored to non-finite values; lower --gamma or raise --tau")
        wiener = None
        if reference is not None:
            wiener = tikhonov(y_prior, plain_op, grad_std=0.1).estimate
            wiener = from_prior_channels(plain_op.frame(wiener), y.shape[1]).cpu()
        out = []
        for k, it in enumerate(items):
            record = {"name": it.name, "input": str(it.read), "height": x.shape[-2], "width": x.shape[-1],
                      "noise_std": it.noise, "iterations": iterations[k], "diverged": bool(diverged[k]),
                      "seconds": seconds, "rank": self.global_rank}
            if reference is not None:
                ref = reference[k:k + 1].cpu()
                record.update(metrics_of(x[k:k + 1].cpu(), ref))
                record["tikhonov_psnr"] = metrics_of(wiener[k:k + 1], ref)["psnr"]
                if y.shape[-2:] == ref.shape[-2:]:
                    record["degraded_psnr"] = metrics_of(y[k:k + 1].cpu(), ref)["psnr"]
            out.append({"item": it, "restored": x[k].cpu(), "degraded": y[k].cpu(), "record": record})
        return out


class FolderWriter(BasePredictionWriter):
    """Writes each image of a batch: restored (and degraded, when synthetic) PNGs, then its record, atomically.
    With ``tensorboard``, each process also logs every image's figures as it is done to OUT/tb/rank{r}
    (``image/psnr``, ``image/ssim``, ``image/iterations``, ``image/noise_std``, ``image/seconds``, the step being
    the image's index in the folder) and the first :data:`TB_IMAGES` images' restorations."""

    def __init__(self, out: Path, synthetic: bool, tensorboard: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.out, self.synthetic, self.tensorboard = out, synthetic, tensorboard
        self.tb = None

    def _log(self, rank: int, it: Item, record: dict, restored: Tensor) -> None:
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out / "tb" / f"rank{rank}"))
        for key in ("psnr", "ssim", "iterations", "noise_std", "seconds"):
            if record.get(key) is not None:
                self.tb.add_scalar(f"image/{key}", record[key], it.index)
        if it.index < TB_IMAGES:
            self.tb.add_image(f"restored/{it.name}", restored.clamp(0, 1), it.index)

    def write_one(self, it: Item, record: dict, restored: Tensor, degraded: Tensor, rank: int = 0,
                  restored_written: bool = False) -> None:
        """``restored`` (unless written already), ``degraded`` when synthetic, then the record, atomically."""
        kinds = [] if restored_written else [("restored", restored)]
        if self.synthetic:
            kinds.append(("degraded", degraded))
        for kind, image in kinds:
            write_image(self.out / kind / f"{it.name}.png", image.clamp(0, 1), bit_depth=it.bit_depth)
        atomic_write_bytes(self.out / "records" / f"{it.name}.json", json.dumps(record, indent=1).encode())
        if self.tensorboard:
            self._log(rank, it, record, restored)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for r in prediction:
            self.write_one(r["item"], r["record"], r["restored"], r["degraded"], trainer.global_rank)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        trainer.strategy.barrier("images_written")  # every rank's images are on disk when predict returns


def _check_run(args: argparse.Namespace, items: list[Item]) -> None:
    """OUT may only be resumed by the same run: its images, prior and settings (:func:`restore.predict.check_run`)."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    check_run(args.out, {"images": [str(it.read) for it in items], "prior": file_id(args.prior), "settings": settings},
              f"{args.out} holds a run of other images, prior or settings; give another --out or delete that folder")


def _lightning_device(args: argparse.Namespace) -> tuple[str, object]:
    """(accelerator, devices): ``--accelerator``/``--devices``, or ``--device`` when those are left alone."""
    if args.accelerator != "auto" or args.devices != 1 or args.device == "auto":
        return args.accelerator, args.devices
    device = pick_device(args.device)
    if device.type == "cuda":
        return "gpu", [device.index or 0]
    return device.type, 1


def summarise(args: argparse.Namespace, items: list[Item], configs: dict[float, object]) -> dict:
    """metrics.csv and metrics.json from every image's record; returns the means (restore.py prints them)."""
    records = []
    for it in items:
        path = args.out / "records" / f"{it.name}.json"
        if not path.is_file():
            raise RuntimeError(f"{it.read.name} has no result in {path.parent}; rerun the same command to finish")
        records.append(json.loads(path.read_text()))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_bytes(args.out / "metrics.csv", text.getvalue().encode())

    def mean(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    means = {k: mean(k) for k in ("psnr", "ssim", "degraded_psnr", "tikhonov_psnr", "iterations", "noise_std")}
    summary = {"images": len(records), **{k: v for k, v in means.items() if v is not None},
               "diverged": sum(bool(r.get("diverged")) for r in records),
               "seconds": sum(r["seconds"] for r in records)}
    solver = {str(noise): asdict(cfg) for noise, cfg in configs.items()}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    atomic_write_bytes(args.out / "metrics.json", json.dumps({"mean": summary, "settings": settings, "solver": solver},
                                                             indent=2, default=str).encode())
    for kind in ("restored", "degraded", "records"):  # left by a process killed while writing (atomic_path's names)
        for stale in (args.out / kind).rglob(".*.tmp.*"):
            stale.unlink(missing_ok=True)
    return {**summary, "output": f"restored/ ({len(records)} images), metrics.csv"}


def run_folder(args: argparse.Namespace) -> dict:
    """``restore.py`` with a folder (module docstring): plan and check, restore what is left, summarise."""
    validate_flags(args)
    args.noise_estimated = args.noise_std == "auto"  # per image: metrics.csv's noise_std (args keeps "auto")
    items, configs, spec = plan(args)
    accelerator, devices = _lightning_device(args)
    if args.images_per_batch is None:  # a batch fills a GPU; on a CPU it only costs cache (BENCHMARKS.md, Folders)
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        args.images_per_batch = 4 if gpu else 1
    module = FolderJPMAP(str(args.prior), spec, items, configs, args.images_per_batch)
    data = FolderData(args, items)
    quiet_lightning()
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=args.strategy, num_nodes=args.num_nodes,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=not args.no_progress, inference_mode=False,  # no_grad: each batch
                        # builds its operators, whose kernel caches need tensors that track versions
                        callbacks=[FolderWriter(args.out, synthetic=args.input is None, tensorboard=args.tensorboard)])
    _check_run(args, items)  # the first file written, once the Trainer has accepted its settings
    done = {it.name for it in items if (args.out / "records" / f"{it.name}.json").is_file()}  # before any writing
    writer = trainer.callbacks[-1]
    if any(not it.tiled and it.name not in done for it in items):
        trainer.predict(module, datamodule=data, return_predictions=False)
    for it in items:  # every process takes part in each large image's predict loop
        if it.tiled and it.name not in done:
            restore_large(args, it, configs[it.noise], accelerator, devices, writer)
    if not trainer.is_global_zero:
        return {}
    return summarise(args, items, configs)


def restore_large(args: argparse.Namespace, item: Item, config, accelerator: str, devices,
                  writer: FolderWriter) -> None:
    """One image over :data:`WHOLE_IMAGE_MAX_PIXELS` output pixels (or any, with ``--tile``), tile by tile
    (:func:`restore.predict.restore_tiled` with ``--tile``, ``--halo``, ``--tiles-per-batch``, ``--blend``; its tiles
    in OUT/tiles/NAME until it is assembled), on every process; then, on rank 0, its record (figures of the assembled
    8- or 16-bit image, as the single-image tiled path gives them; no Wiener baseline, which would need the whole
    image in one piece) and the same logs as the others'."""
    from .predict import restore_tiled
    y, reference, operator = observe(args, item)
    start = time.perf_counter()
    kwargs = {**tiled_kwargs(args, operator), "accelerator": accelerator, "devices": devices}
    out_path = restore_tiled(y, operator.cpu(), args.prior, config, args.out / "restored" / f"{item.name}.png",
                             bit_depth=item.bit_depth, work_dir=args.out / "tiles" / item.name, **kwargs)
    if not is_rank_zero():
        return
    restored = read_image_with_info(out_path)[0]
    record = {"name": item.name, "input": str(item.read), "height": restored.shape[-2], "width": restored.shape[-1],
              "noise_std": item.noise, "iterations": None, "diverged": None,
              "seconds": time.perf_counter() - start, "rank": 0, "tiled": True}
    if reference is not None:
        record.update(metrics_of(restored[None], reference[None]))
        if y.shape[-2:] == reference.shape[-2:]:
            record["degraded_psnr"] = metrics_of(y[None], reference[None])["psnr"]
    writer.write_one(item, record, restored, y, restored_written=True)
    if writer.tb is not None:
        writer.tb.close()
        writer.tb = None
    tiles = args.out / "tiles"
    for folder in (tiles / item.name, *(tiles / item.name).parents):  # empty once assembled, up to OUT/tiles
        if folder.is_relative_to(tiles) and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
