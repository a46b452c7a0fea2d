"""Patch-wise JPMAP as a Lightning predict loop: tiles of one or many images, on any number of processes.

* :class:`TileDataset` yields the tiles of the images (only the tiles without a result file when built by
  :class:`TileDataModule`), read box by box from :class:`restore.large_io.ImageSource` objects;
* :class:`TiledJPMAP` (a LightningModule) runs batched :func:`restore.jpmap.jpmap` on the tiles of a batch
  (each tile stopping on its own residual; the prior seeing each window as the whole-image run sees those
  pixels: a window on the image's pooling grid directly, one cut at a circular grid's border or clipped to the
  image's end through :class:`SegmentedPrior`; with a compiled pass or CUDA graphs, one batch shape per run)
  and refuses non-finite results with an error naming the image and the tile's position;
* :class:`TileWriter` (a BasePredictionWriter, ``write_interval="batch"``) writes each restored tile
  atomically to ``tiles_dir/img{i}_tile{j}.npy`` and holds every rank at a barrier at the end of prediction,
  so rank 0 can assemble as soon as ``trainer.predict`` returns.

Under DDP, Lightning's predict sampler splits the tiles between ranks without repeating any. The list of
missing tiles is computed in ``TileDataModule.setup``, which Lightning runs on every rank between the
``pre_setup`` and ``post_setup`` barriers, i.e. before any tile is written: all ranks agree on it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.images import DEFAULT_MAX_PIXELS, atomic_write_bytes
from hvae.export import load_prior

from .assemble import TileError, assemble, missing_tiles, save_tile, tile_path
from .jpmap import DivergenceGuard, JPMAPConfig, initial_x, jpmap, network_for
from .large_io import ImageSource, TensorSource, open_image
from .operators import Blur, Denoising, Inpainting, SuperResolution, masks_per_channel, prior_operator
from .tiling import (BLEND_MODES, Box, Segments, TileGrid, WindowOperator, default_halo, is_circular, pad_segment,
                     valid_extent)


def operator_spec(operator) -> dict:
    """Picklable description of an operator (the mask of Inpainting travels with the tiles instead)."""
    if isinstance(operator, Inpainting):
        return {"operator": "inpaint", "sigma": operator.sigma}
    if isinstance(operator, SuperResolution):
        return {"operator": "sr", "sigma": operator.sigma, "kernel": operator.kernel.cpu(), "factor": operator.factor,
                "padding": operator.padding}
    if isinstance(operator, Blur):
        return {"operator": "blur", "sigma": operator.sigma, "kernel": operator.kernel.cpu(), "padding": operator.padding}
    if isinstance(operator, Denoising):
        return {"operator": "denoise", "sigma": operator.sigma}
    raise TypeError(f"tiled restoration cuts Denoising, Blur, SuperResolution and Inpainting into windows, not "
                    f"{type(operator).__name__}; restore the whole image with restore.jpmap.jpmap")


def build_operator(operator: str, sigma: float, kernel: Tensor | None = None, factor: int = 1,
                   padding: str = "circular"):
    """The operator of a spec (:func:`operator_spec`): None for "inpaint", whose mask comes with each batch."""
    ops = {"denoise": lambda: Denoising(sigma), "blur": lambda: Blur(kernel, sigma, padding),
           "sr": lambda: SuperResolution(kernel, factor, sigma, padding), "inpaint": lambda: None}
    if operator not in ops:
        raise ValueError(f"unknown operator {operator!r}; use one of {sorted(ops)}")
    return ops[operator]()


def on_pooling_grid(segments: Segments) -> bool:
    """Whether a window lies on the whole image's pooling grid as it is (one piece per axis, nothing to pad before
    it): the network then sees it as :class:`SegmentedPrior` would, through jpmap's own padding at the end."""
    rows, cols = segments
    return len(rows) == 1 and len(cols) == 1 and rows[0].before == 0 and cols[0].before == 0


class SegmentedPrior:
    """The prior as the z-step of a batch of tiles must see it (a :class:`restore.prior.Prior` for
    :func:`restore.jpmap.jpmap`): each tile's window is encoded piece by piece, each piece padded onto the
    whole image's pooling grid (:meth:`restore.tiling.TileGrid.segments`), so that a window that wraps around
    the image border shows the prior the border, not the opposite edge's pixels, and every pooling cell
    covers the pixels it covers in the whole-image run. ``segments``: one entry per batch item.

    ``multiple`` is 1 because the padding is done here: jpmap's own padding then does nothing."""

    multiple = 1

    def __init__(self, prior, segments: list[Segments]) -> None:
        self.prior, self.segments = prior, list(segments)
        self.image_channels, self.num_groups = prior.image_channels, prior.num_groups

    def encode_decode(self, x: Tensor, tau) -> tuple[list[Tensor], Tensor]:
        if x.shape[0] != len(self.segments):
            raise ValueError(f"{x.shape[0]} tiles but segments for {len(self.segments)}")
        groups: dict[Segments, list[int]] = defaultdict(list)
        for k, seg in enumerate(self.segments):
            groups[seg].append(k)
        out = None
        for (rows, cols), idx in groups.items():
            xb = x[idx] if len(idx) < x.shape[0] else x
            for r in rows:
                for c in cols:
                    piece = pad_segment(xb[..., r.w0:r.w1, c.w0:c.w1], r, c)
                    _, dec = self.prior.encode_decode(piece, tau)
                    if out is None:
                        out = x.new_empty(x.shape, dtype=dec.dtype)
                    out[idx, :, r.w0:r.w1, c.w0:c.w1] = dec[..., r.before:r.before + r.w1 - r.w0,
                                                            c.before:c.before + c.w1 - c.w0]
        return [], out  # jpmap uses G(z) only


class TileDataset(Dataset):
    """Tiles of one or many images: item = dict(image_index, tile_index, row, col, box (observation box,
    [4] = r0, r1, c0, c1), y_tile [C, h, w] float32, segments (how the z-step cuts the window, see
    :meth:`restore.tiling.TileGrid.segments`), used (the window's part that gets stitching weight, [4], output
    pixels, window coordinates), and mask [Cm, h, w] for inpainting).

    ``tiles`` lists the (image index, tile index) pairs to serve, default all of them."""

    def __init__(self, sources: list[ImageSource], grids: list[TileGrid], masks: list[ImageSource] | None = None,
                 tiles: list[tuple[int, int]] | None = None) -> None:
        if len(sources) != len(grids) or (masks is not None and len(masks) != len(sources)):
            raise ValueError("give one grid (and one mask, for inpainting) per image")
        self.sources, self.grids, self.masks = sources, grids, masks
        self.tiles = [(i, t.index) for i, g in enumerate(grids) for t in g.tiles] if tiles is None else list(tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, k: int) -> dict:
        i, j = self.tiles[k]
        t = self.grids[i].tiles[j]
        item = {"image_index": i, "tile_index": j, "row": t.row, "col": t.col,
                "box": torch.tensor(t.obs_box), "y_tile": self.sources[i].read(t.obs_box),
                "segments": self.grids[i].segments(t), "used": torch.tensor(self.grids[i].used_box(t))}
        if self.masks is not None:
            item["mask"] = self.masks[i].read(t.out_box)
        return item


def collate_tiles(items: list[dict]) -> dict:
    """Integers stacked into tensors, images kept as lists (tiles of different images may differ in shape)."""
    out = {k: torch.as_tensor([it[k] for it in items]) for k in ("image_index", "tile_index", "row", "col")}
    out["box"] = torch.stack([it["box"] for it in items])
    if "used" in items[0]:
        out["used"] = torch.stack([it["used"] for it in items])
    for k in ("y_tile", "mask", "segments"):
        if k in items[0]:
            out[k] = [it[k] for it in items]
    return out


class TileDataModule(L.LightningDataModule):
    """Serves the tiles that have no file in ``tiles_dir`` yet (the list is made in ``setup``, on every rank
    between Lightning's setup barriers), those on the pooling grid first; padded by repeating tiles up to the
    world size so that every rank gets at least one (a repeated tile is rewritten with the same values,
    atomically)."""

    def __init__(self, sources: list[ImageSource], grids: list[TileGrid], tiles_dir: str | os.PathLike,
                 masks: list[ImageSource] | None = None, tiles_per_batch: int = 4, num_workers: int = 0) -> None:
        super().__init__()
        self.sources, self.grids, self.masks = sources, grids, masks
        self.tiles_dir, self.tiles_per_batch, self.num_workers = Path(tiles_dir), tiles_per_batch, num_workers
        self.dataset: TileDataset | None = None

    def setup(self, stage: str) -> None:
        # windows on the pooling grid first, then those cut at a circular grid's border or clipped to the image's
        # end: batches of one kind, so that the fast paths run whole batches (TiledJPMAP.predict_step)
        todo = sorted(missing_tiles(self.tiles_dir, self.grids),
                      key=lambda it: not on_pooling_grid(self.grids[it[0]].segments(self.grids[it[0]].tiles[it[1]])))
        world = self.trainer.world_size if self.trainer is not None else 1
        everything = [(i, t.index) for i, g in enumerate(self.grids) for t in g.tiles]
        k = 0
        while len(todo) < world:
            todo.append(everything[k % len(everything)])
            k += 1
        self.dataset = TileDataset(self.sources, self.grids, self.masks, todo)

    def predict_dataloader(self) -> DataLoader:
        # pinned host tiles: Lightning copies batches to a GPU with non_blocking=True, overlapping the transfer
        cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(self.dataset, batch_size=self.tiles_per_batch, shuffle=False, collate_fn=collate_tiles,
                          num_workers=self.num_workers, persistent_workers=False, pin_memory=cuda)


class TiledJPMAP(L.LightningModule):
    """Batched JPMAP on tiles. ``operator`` is "denoise", "blur", "sr" or "inpaint" with its ``sigma``,
    ``kernel`` and ``factor`` (see :func:`operator_spec`); the prior is loaded from ``prior_path``.
    ``fill`` (inpainting, one value per channel): the whole image's mean of the observed pixels, the value
    :meth:`restore.operators.Inpainting.init` gives the missing pixels in the whole-image run (a tile's own
    mean would start each tile elsewhere: 40 dB from the whole-image estimate instead of 59, shipped prior,
    50% missing, 5 iterations). ``band`` (circular operators): the observation pixels at the window edges
    that the x-step ignores (:meth:`restore.tiling.TileGrid.edge_band`, :class:`restore.tiling.WindowOperator`).
    ``batch_tiles``: the data loader's batch size (``tiles_per_batch``); with a compiled pass or CUDA graphs a
    smaller batch (the last one) is filled up to it with copies of its last tile, so that it runs the shape
    already compiled. ``padding="valid"`` (blur, sr): each window is solved with the valid model, exact for any
    window (its x grid holds all the scene pixels that its observations see, so no band), and the restored
    window is cropped to its frame."""

    def __init__(self, prior_path: str, jpmap_config: JPMAPConfig, operator: str, sigma: float,
                 kernel: Tensor | None = None, factor: int = 1, fill: list[float] | None = None,
                 band: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)), batch_tiles: int = 1,
                 padding: str = "circular") -> None:
        super().__init__()
        self.batch_tiles = batch_tiles
        self.prior = load_prior(prior_path)
        self.config, self.name, self.sigma, self.fill = jpmap_config, operator, sigma, fill
        self.operator = build_operator(operator, sigma, kernel, factor, padding)
        if self.operator is not None and any(v for side in band for v in side):
            self.operator = WindowOperator(self.operator, tuple(tuple(int(v) for v in side) for side in band))
        self.tiles_done = 0  # tiles restored by this process (for tests and logs)

    def _solve(self, y: Tensor, mask: Tensor | None, segments: list[Segments] | None = None,
               used: Tensor | None = None) -> Tensor:
        """JPMAP on a stack of equal-shaped tiles; colour through a grey prior runs channel by channel, grey through
        a colour prior as a grey image in its channels (:class:`restore.operators.GreyObservation`).
        ``segments`` (one per tile) makes the z-step see each window as the whole-image run sees those pixels
        (:class:`SegmentedPrior`); without it the prior sees the windows as they are. ``used`` ([n, 4] boxes):
        the part of each window whose residual decides when the tile stops (default: all of it)."""
        n, c, h, w = y.shape
        pc = self.prior.image_channels
        x0 = None
        if mask is not None and self.fill is not None and self.config.init == "auto":  # Inpainting.init, far fill: image mean
            fill = torch.as_tensor(self.fill, dtype=y.dtype, device=y.device).reshape(1, c, 1, 1)
            x0 = Inpainting(mask, self.sigma).init(y, fill)
        if c != pc and pc == 1:
            y = y.reshape(n * c, 1, h, w)
            mask = None if mask is None else masks_per_channel(mask, c)
            segments = None if segments is None else [s for s in segments for _ in range(c)]
            used = None if used is None else used.repeat_interleave(c, 0)
            x0 = None if x0 is None else x0.reshape(n * c, 1, h, w)
        elif c != pc:  # grey through a colour prior: y stays grey, x is grey in the prior's channels
            x0 = None if x0 is None else x0.expand(n, pc, *x0.shape[-2:]).contiguous()
        x = self._jpmap_per_tile(y, mask, segments, x0, used, group=c if c != pc and pc == 1 else 1)
        if c != pc:
            x = x.reshape(n, c, *x.shape[-2:]) if pc == 1 else x.mean(1, keepdim=True)
        return x

    def _one_shape(self, device: torch.device) -> bool:
        """Whether the network pass is compiled or replayed from a CUDA graph on ``device`` (a graph only on
        CUDA): made for one input shape, so that batches keep theirs."""
        return self.config.compile or (self.config.cuda_graph and device.type == "cuda")

    def _jpmap_per_tile(self, y: Tensor, mask: Tensor | None, segments: list[Segments] | None, x0: Tensor | None,
                        used: Tensor | None = None, group: int = 1) -> Tensor:
        """:func:`restore.jpmap.jpmap` on a batch, each tile stopping on its own residual: the result of a tile
        does not depend on the tiles batched with it (jpmap alone stops a batch when *all* of its images are
        below ``tol``, so a tile would run more iterations in a batch of harder tiles, or with another
        ``--tiles-per-batch`` or number of processes). The iteration is memoryless (x -> prox(G(E(x)))), so
        running it in chunks of ``check_every`` iterations from the last x is the same computation; the
        last iteration of each chunk gives the per-tile residual, the RMS change over the ``used`` part of the
        window (the edges of a window are solved with less context and keep moving after its core has
        settled). ``group`` consecutive items (the channels of one tile through a grey prior) stop together,
        as the whole image's channels do. The divergence guard works per tile on the same residual, checked
        at the end of each chunk: a tile whose residual exceeds ``divergence_guard`` times its smallest one
        keeps the iterate of that smallest residual.

        Windows that lie on the whole image's pooling grid as they are (one piece per axis, nothing to pad
        before it: every window whose start is on the grid and that no circular grid cuts at the image border;
        the last window of an axis whose length is not a multiple of the prior's factor is clipped to the
        image's end, off the grid) go to the network itself, whose padding by jpmap is then the same; the others
        through :class:`SegmentedPrior`. A compiled pass or a CUDA graph is made for one input shape, so with
        either the batch keeps its shape to the end (tiles that have stopped are computed with the others and
        keep their result: no compilation or capture per number of tiles still running), and the other windows
        run eagerly (each piece has its own shape); a batch smaller than ``batch_tiles`` tiles is filled up with
        copies of its last tile."""
        cfg = self.config
        on_grid = segments is None or all(on_pooling_grid(seg) for seg in segments)
        fixed = on_grid and self._one_shape(y.device)
        n = y.shape[0]
        copies = max(0, self.batch_tiles - n // group) if fixed else 0
        if copies:  # the last tile (its `group` items) again, up to the batch shape already compiled or captured

            def fill(t: Tensor | None) -> Tensor | None:
                return None if t is None else torch.cat([t, t[-group:].repeat(copies, *[1] * (t.ndim - 1))])

            y, mask, x0, used = fill(y), fill(mask), fill(x0), None if used is None else fill(torch.as_tensor(used))
            segments = None if segments is None else list(segments) + list(segments[-group:]) * copies
        chunk_cfg = replace(cfg, tol=0.0, divergence_guard=None)
        if not on_grid:
            chunk_cfg = replace(chunk_cfg, compile=False, cuda_graph=False)
        channels = self.prior.image_channels

        def operator_for(mask: Tensor | None):  # the tiles' operator (GreyObservation for grey through colour)
            op = self.operator if mask is None else Inpainting(mask, self.sigma).to(y.device)
            return prior_operator(op, y.shape[1], channels)

        op = operator_for(mask)
        x = initial_x(y, op, cfg.init) if x0 is None else x0.clone()
        est = x.clone()
        guard = None if cfg.divergence_guard is None else DivergenceGuard(cfg.divergence_guard, cfg.tol, (x, est))
        dr, dc = getattr(self.operator, "frame_offset", (0, 0))  # the used boxes on x's grid (larger when valid)
        used_boxes = None if used is None else [(r0 + dr, r1 + dr, c0 + dc, c1 + dc)
                                                for r0, r1, c0, c1 in torch.as_tensor(used).long().tolist()]
        everything = torch.arange(y.shape[0], device=y.device)
        active = everything[:n]  # the copies that fill the batch up are computed, never waited for
        net = network_for(self.prior, cfg)  # bf16 weights and NHWC layout, once (SegmentedPrior is no nn.Module)
        done = 0
        ran = torch.zeros(n, dtype=torch.long, device=y.device)  # iterations each item ran
        while done < cfg.max_iters and len(active):
            step = min(cfg.check_every, cfg.max_iters - done)
            run = everything if fixed else active  # the tiles computed in this chunk
            idx = run.tolist()
            if mask is not None:
                op = operator_for(mask[run])
            prior = net if on_grid else SegmentedPrior(net, [segments[i] for i in idx])
            ya, xa = y[run], x[run]
            if step > 1:
                xa = jpmap(ya, op, prior, replace(chunk_cfg, max_iters=step - 1), x0=xa).x
            last = jpmap(ya, op, prior, replace(chunk_cfg, max_iters=1), x0=xa)
            change = (last.x - xa) ** 2
            if used is None:
                rms = change.flatten(1).mean(1).sqrt()
            else:
                boxes = [used_boxes[i] for i in idx]
                rms = torch.stack([change[k, :, r0:r1, c0:c1].mean() for k, (r0, r1, c0, c1) in enumerate(boxes)]).sqrt()
            new_x, new_est = last.x.to(x.dtype), last.estimate.to(est.dtype)
            if fixed:  # only the tiles still running take this chunk's result
                rms, new_x, new_est = rms[active], new_x[active], new_est[active]
            if guard is not None:  # a tile that stopped keeps the iterate of its smallest residual
                new_x, new_est = guard.update(rms, (new_x, new_est), active)
            x[active], est[active] = new_x, new_est
            ran[active] += step
            done += step
            moving = rms >= cfg.tol if guard is None else (rms >= cfg.tol) & ~guard.stopped[active]
            active = active[moving.reshape(-1, group).any(1).repeat_interleave(group)]
        self.last_iterations = ran[::group].cpu()  # per tile (its `group` items run together)
        stopped = torch.zeros(n, dtype=torch.bool) if guard is None else guard.stopped[:n].cpu()
        self.last_diverged = stopped.reshape(-1, group).any(1)  # per tile: the guard stopped one of its items
        return self.operator.frame(est[:n]) if self.operator is not None else est[:n]

    def predict_step(self, batch: dict, batch_idx: int) -> list[Tensor]:
        """Restored tiles (float32, on the host) in batch order; tiles of one shape are solved together. With a
        compiled pass or CUDA graphs, windows on the pooling grid and the others (cut at a circular grid's
        border, or clipped to the image's end) are solved apart: the first with the fast path, the second
        eagerly (see :meth:`_jpmap_per_tile`), so that one border window in a batch does not send the whole
        batch down the eager path."""
        ys, masks, segments, used = batch["y_tile"], batch.get("mask"), batch.get("segments"), batch.get("used")
        fast = self._one_shape(ys[0].device)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for k, y in enumerate(ys):
            cut_apart = fast and segments is not None and not on_pooling_grid(segments[k])
            groups[tuple(y.shape) + (tuple(masks[k].shape) if masks is not None else ()) + (cut_apart,)].append(k)
        out: list[Tensor | None] = [None] * len(ys)
        for idx in groups.values():
            y = torch.stack([ys[k] for k in idx]).float()
            mask = torch.stack([masks[k] for k in idx]).float() if masks is not None else None
            x = self._solve(y, mask, None if segments is None else [segments[k] for k in idx],
                            None if used is None else used[idx])
            finite = torch.isfinite(x).flatten(1).all(1).cpu()
            for n, k in enumerate(idx):
                if not finite[n]:
                    i, j = int(batch["image_index"][k]), int(batch["tile_index"][k])
                    box = Box(*(int(v) for v in batch["box"][k]))
                    raise TileError(f"image {i}, tile {j} (grid row {int(batch['row'][k])}, col {int(batch['col'][k])}; "
                                    f"observation {box.describe()}) restored to non-finite values; check the input "
                                    "there for NaN/inf, lower gamma or raise tau")
                out[k] = x[n].float().cpu()
        self.tiles_done += len(ys)
        return out


class TileWriter(BasePredictionWriter):
    """Writes each restored tile of a batch atomically to ``tiles_dir/img{i}_tile{j}.npy``."""

    def __init__(self, tiles_dir: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.tiles_dir = Path(tiles_dir)
        self.written: list[tuple[int, int]] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for k, x in enumerate(prediction):
            i, j = int(batch["image_index"][k]), int(batch["tile_index"][k])
            save_tile(tile_path(self.tiles_dir, i, j), x.numpy())
            self.written.append((i, j))

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier("tiles_written")  # every rank's tiles are on disk when predict returns


def check_run(folder: Path, fingerprint: dict, refusal: str) -> None:
    """Results in ``folder`` may only be reused by the same run: compare ``fingerprint`` with its ``run.json``
    (raising ValueError(``refusal``) if they differ), or write it there."""
    text = json.dumps(fingerprint, indent=1, sort_keys=True, default=str)
    run = folder / "run.json"
    if run.is_file():
        if run.read_text() != text:
            raise ValueError(refusal)
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run, text.encode())


def restore_tiled(y, operator, prior_path: str | os.PathLike, jpmap_config: JPMAPConfig,
                  out_path: str | os.PathLike, tile: int = 512, halo: int | None = None, tiles_per_batch: int = 4,
                  devices: int | str = 1, accelerator: str = "cpu", strategy: str = "auto", num_nodes: int = 1,
                  work_dir: str | os.PathLike | None = None, blend: str = "blend", bit_depth: int | None = None,
                  keep_tiles: bool = False, num_workers: int = 0, progress: bool = False,
                  max_pixels: int | None = None) -> Path:
    """Restore ``y`` (a path: .npy/.tif memory-mapped, .png/.jpg...; or a [C, H, W] tensor) tile by tile and
    write the stitched estimate to ``out_path`` (.png/.jpg/.tif/.npy; see :mod:`restore.assemble`).

    Tiles are computed by ``trainer.predict`` on ``devices`` x ``num_nodes`` processes, written to
    ``work_dir/tiles`` (default: the output's folder) and reused if the same call is repeated after an
    interruption. Rank 0 assembles once every rank has finished; the other ranks return without assembling.
    ``halo`` defaults to :func:`restore.tiling.default_halo`; ``bit_depth`` to the input's (8 or 16).
    The tile files are deleted after a successful assembly unless ``keep_tiles``.
    """
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    source = open_image(y, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    channels, height, width = source.shape
    spec = operator_spec(operator)
    prior = load_prior(prior_path)
    halo = default_halo(operator, prior.multiple, jpmap_config.gamma) if halo is None else int(halo)
    scale = int(spec.get("factor", 1))
    grid = TileGrid(height, width, int(tile), halo, scale, circular=is_circular(operator), multiple=prior.multiple,
                    extent=valid_extent(operator))
    kernel = spec.get("kernel")
    # a circular tile wraps onto itself (a valid window's x grid holds the kernel whatever its size)
    if grid.circular and (kernel.shape[0] > grid.tile_shape[0] * scale or kernel.shape[1] > grid.tile_shape[1] * scale):
        raise ValueError(f"tiles of {grid.tile_shape[0] * scale}x{grid.tile_shape[1] * scale} output pixels are "
                         f"smaller than the {kernel.shape[0]}x{kernel.shape[1]} kernel; use a larger --tile or --halo")
    masks = None
    if isinstance(operator, Inpainting):
        m = operator.mask
        if m.shape[0] != 1 or tuple(m.shape[-2:]) != (height, width):
            raise ValueError(f"inpainting mask of shape {tuple(m.shape)} does not fit one {height}x{width} image")
        masks = [TensorSource(m[0].float())]
        spec["fill"] = observed_mean(source, masks[0])
    out_path = Path(out_path)
    work_dir = Path(work_dir) if work_dir is not None else out_path.parent
    tiles_dir = work_dir / "tiles"
    check_run(tiles_dir, {"input": source.fingerprint(), "grid": grid.describe(), "channels": channels,
                          "operator": {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in spec.items()},
                          "mask": masks[0].fingerprint() if masks else None, "config": asdict(jpmap_config),
                          "prior": file_id(prior_path)},
              f"{tiles_dir} holds tiles of another run (other input, operator, prior or settings); delete that "
              "folder or choose another output folder")
    del prior
    is_zero = True
    if missing_tiles(tiles_dir, [grid]):
        band = grid.edge_band(tuple(kernel.shape) if grid.circular else None)
        # a batch is filled up to the shape the full batches compile; no further than the image's tiles
        module = TiledJPMAP(str(prior_path), jpmap_config, **spec, band=band,
                            batch_tiles=min(tiles_per_batch, len(grid)))
        data = TileDataModule([source], [grid], tiles_dir, masks, tiles_per_batch, num_workers)
        quiet_lightning()
        trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
                            logger=False, enable_checkpointing=False, enable_model_summary=False,
                            enable_progress_bar=progress, callbacks=[TileWriter(tiles_dir)])
        trainer.predict(module, datamodule=data, return_predictions=False)
        is_zero = trainer.is_global_zero
    if not is_zero:
        return out_path
    if bit_depth is None:  # the input's depth: PNG 8 or 16, TIFF 8, 16 or 32; .npy is always float32
        tiff = out_path.suffix.lower() in (".tif", ".tiff")
        bit_depth = source.bit_depth if tiff or source.bit_depth == 16 else 8
    assemble(grid, tiles_dir, out_path, channels, 0, blend, work_dir, bit_depth)
    for stale in tiles_dir.glob(".img*_tile*.tmp.npy"):  # left by a process killed while writing a tile
        stale.unlink(missing_ok=True)
    if not keep_tiles:
        for t in grid.tiles:
            tile_path(tiles_dir, 0, t.index).unlink(missing_ok=True)
        (tiles_dir / "run.json").unlink(missing_ok=True)
        if tiles_dir.is_dir() and not any(tiles_dir.iterdir()):
            tiles_dir.rmdir()
    return out_path


def observed_mean(source: ImageSource, mask: ImageSource, strip_bytes: int = 16 * 2**20) -> list[float]:
    """Per-channel mean of the observed pixels (mask > 0.5) of the whole image, read in strips of rows: the
    fill value of :meth:`restore.operators.Inpainting.init`."""
    c, h, w = source.shape
    total, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    step = max(1, strip_bytes // (4 * c * w))
    for r in range(0, h, step):
        box = Box(r, min(h, r + step), 0, w)
        y, obs = source.read(box).double(), (mask.read(box) > 0.5).double().expand(c, -1, -1)
        total += (y * obs).sum((-2, -1))
        count += obs.sum((-2, -1))
    return (total / count.clamp_min(1)).tolist()


class _NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_NO_ADVERT = _NoAdvert()


def quiet_lightning() -> None:
    """Leaves out of restore.py's output what is not the user's to act on: Lightning's tip advertising its cloud
    logger, and a deprecation warning Lightning's own code raises under this torch (its ``_pytree``). Lightning's
    device and distributed lines stay."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_ADVERT)  # the same filter: once
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def is_rank_zero() -> bool:
    """False in the non-zero ranks of a multi-process run (after :func:`restore_tiled` returned there):
    callers write their own outputs (metrics, previews) only where this is True."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def file_id(path) -> str:
    """Which file ``path`` is, as a run's fingerprint records it: its resolved path, size and modification time."""
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
