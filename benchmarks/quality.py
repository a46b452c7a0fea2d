"""Restoration quality of PnP-HVAE against baselines, every method on the same degraded images.

    python benchmarks/quality.py --limit 4 --crop 128 --tasks deblur sr2 inpaint_random --figures
    python benchmarks/quality.py --dataset faces --prior priors/faces.pt          # CelebA-HQ (needs a face prior)

Protocol. Each clean image x (centre-cropped to ``--crop``, then to a multiple of the SR factor) is degraded
synthetically as y = A x + n, n ~ N(0, sigma^2 I), in float64, with circular boundaries (``--boundary valid``, for
deblur and SR: y holds only the outputs whose kernel support lies inside the crop, every method restores the crop's
grid with the valid model and is scored on y's frame; ``pnp-hvae-circ`` and ``wiener-circ`` restore the same y
with the circular model on y's frame, what a solver that assumes periodic images does with a photograph), no
clipping and the
generator ``torch.Generator().manual_seed(seed + image_index)`` (masks are drawn from it first, then the noise),
image_index being the image's place in the sorted folder: runs on parts of a folder (``--start``, ``--limit``)
degrade each image as one run on the whole would, and ``--merge`` joins their CSVs into one table.
y is then cast to float32 and every method restores the SAME y with the SAME operator object.
PSNR is on the full image (no border removed) of the estimate clamped to [0, 1] against the clean image;
SSIM is torchmetrics' ``structural_similarity_index_measure(data_range=1)`` on the same tensors.

Tasks (``--tasks``):
  deblur          the published PnP-HVAE natural-image protocol: kernels 4, 7, 9, 11 of ``--kernels`` (25x25)
                  at noise 2.55, 7.65, 12.75 on the 0-255 scale (12 settings; ``--deblur-kernels`` and
                  ``--deblur-noises`` select a subset)
  sr2, sr4        down-sampling by the factor with ``--sr-kernel`` (restore.py's default, bicubic: PIL's and
                  MATLAB imresize's, each low-resolution pixel centred on its block, restore.operators.sr_kernel;
                  gaussian-centred: the tables before 2026-11-29, a Gaussian of std 0.5 * factor centred on the
                  block's first pixel); noise --sr-noise (2.55; the faces protocol uses 3)
  inpaint_random  50% of the pixels missing (same mask on all channels), noise 2.55
  inpaint_boxes   3 missing squares of side round(0.2 * min(H, W)) at random positions, noise 2.55

Methods (``--methods``):
  pnp-hvae  restore.jpmap.jpmap with the operator's preset from ``--preset`` (configs/restore/natural.yaml:
            gamma on the 0-255 scale, tau, iterations, return x|decoded); ``--gamma/--tau/--iters/--return``
            override it
            (``--precision bf16``, ``--channels-last``, ``--compile``: the GPU fast path, for checking that it
            restores as well as fp32 on the same degraded images)
  adam      restore.baselines.adam_joint: Adam on J(x, z) with the same gamma, tau and returned estimate,
            lr ``--adam-lr`` (1e-2), ``--adam-iters`` (200) iterations (``--precision`` too)
  bicubic   no restoration: the operator's start, op.init(y): bicubic up-sampling for SR (y itself for
            deblurring, the missing pixels filled for inpainting)
  wiener    restore.baselines.tikhonov with a fixed gradient std ``--wiener-grad-std`` = 0.1
  tv        restore.baselines.total_variation with lam = c * sigma (sigma on the [0, 1] scale), c = ``--tv-c``
            (default 0.1, chosen with ``--tune-tv``: a grid of c on 2 validation crops of the training folder,
            ``split_files(list_images(folder), 0.05, 0, root=folder)[1][:2]``, deblurring with kernel 9 at the
            three noise levels; never on test images)
  pnp-bm3d  our own half-quadratic splitting loop (DPIR's, Zhang et al. 2021, with BM3D), so that it uses exactly
            the same operators: x_k = operator.prox_l2(z_{k-1}, y, s_k / sqrt(lam)) (exact data step),
            z_k = BM3D(x_k, s_k) with ``deepinv.models.BM3D`` (package bm3d), s_k geometric from 50/255 down to
            max(sigma, 2.55/255) over ``--bm3d-iters`` (8) iterations, z_0 = operator.init(y); returns z_K.
            lam = ``--bm3d-lam`` (DPIR's 0.23), or chosen with ``--tune-bm3d`` as TV's c is (a grid on the same
            validation crops). Needs the optional extra ``pip install -e '.[bench]'`` (deepinv 0.5, bm3d 4.0.3);
            skipped with a note when not importable.

LPIPS (AlexNet, torchmetrics) is added when torchvision's AlexNet weights are already in torch hub's cache
(``lpips_weights()``, normally ~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth): never downloaded;
without them (or with ``--lpips off``, or images under 32 pixels) its column stays empty and the tables say so.

Outputs: a CSV with one row per image x task setting x method (psnr, ssim, lpips, seconds, iterations), and markdown
tables of means per setting and method (printed, and written to ``--tables``) with the machine line and the
exact command. ``--merge CSV ...`` adds the rows of other methods from earlier runs on the same degraded images
(same folder, ``--limit``, ``--crop``, tasks and ``--seed``; checked by image, setting and size before the run)
to this run's CSV and tables, so that a slow method can run apart or on another machine. ``--figures``: on the
first image, deblurring with kernel 9 at noise 7.65: residual and PSNR of x_k per iteration for JPMAP and Adam,
and PSNR against tau (0.5 .. 1.0) for JPMAP; PNGs under ``--fig-dir`` (matplotlib when importable, else a small
PIL line plot). Adam's per-iteration PSNR is recorded by wrapping
``torch.optim.Adam`` for the duration of one call so that each step reports x (no change to baselines.py; the
run is deterministic, so x after k steps is what a separate run with max_iters = k returns).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data.images import list_images, read_image  # noqa: E402
from data.patches import split_files  # noqa: E402
from restore.baselines import AdamConfig, adam_joint, tikhonov, total_variation  # noqa: E402
from restore.cli import from_prior_channels  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.presets import PresetError, parse_tau, preset_for, read_presets  # noqa: E402
from restore.operators import (SR_KERNELS, Blur, Inpainting, SuperResolution, gaussian_kernel, load_kernel, prior_operator,  # noqa: E402
                               random_box_mask, random_mask, sigma_from_255, sr_kernel)

SHARED = ROOT.parent / "shared" / "data"
DATASETS = {  # name -> (default folder, default prior, default preset)
    "natural": (SHARED / "test" / "CBSD68", ROOT / "priors" / "natural.pt", ROOT / "configs/restore/natural.yaml"),
    "faces": (SHARED / "test" / "CelebAHQ", ROOT / "priors" / "faces.pt", ROOT / "configs/restore/faces.yaml"),
}
TASKS = ("deblur", "sr2", "sr4", "inpaint_random", "inpaint_boxes")
METHODS = ("pnp-hvae", "adam", "wiener", "tv", "pnp-bm3d", "pnp-hvae-circ", "wiener-circ", "bicubic")
DEFAULT_METHODS = METHODS[:5]  # the -circ methods: the circular model on a valid blur's observation (--boundary valid)
PRESET_KEY = {"deblur": "blur", "sr2": "sr", "sr4": "sr", "inpaint_random": "inpaint", "inpaint_boxes": "inpaint"}
REQUIRED = ("dataset", "image", "task", "setting", "kernel", "noise255", "method", "psnr", "ssim", "seconds",
            "iterations", "height", "width")
FIELDS = REQUIRED + ("lpips",)  # lpips: empty when not computed (and in CSVs written before it existed)


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One degradation: ``make(height, width, generator)`` builds the operator (drawing a mask if any)."""

    task: str
    name: str
    noise255: float
    kernel: str
    factor: int
    make: Callable[[int, int, torch.Generator], object]


SR_KERNEL_CHOICES = (*SR_KERNELS, "gaussian-centred")


def sr_task_kernel(factor: int, kind: str = "bicubic") -> tuple[torch.Tensor, str]:
    """sr2/sr4's kernel and its CSV label: :func:`restore.operators.sr_kernel` (block-centred), or
    ``gaussian-centred``, the Gaussian of std 0.5 * factor centred on each block's first pixel that the tables before
    2026-11-29 used (label ``gauss<std>``, as in their CSVs)."""
    if kind == "gaussian-centred":
        return gaussian_kernel(0.5 * factor), f"gauss{0.5 * factor:g}"
    return sr_kernel(factor, kind), kind


def build_settings(tasks: Sequence[str], kernels_dir: Path, deblur_kernels: Sequence[int],
                   deblur_noises: Sequence[float], sr_noise: float = 2.55, boundary: str = "circular",
                   sr_kernel_kind: str = "bicubic") -> list[Setting]:
    out: list[Setting] = []
    for task in tasks:
        if task == "deblur":
            for k in deblur_kernels:
                kernel = load_kernel(kernels_dir / f"{k}.npy")
                for s in deblur_noises:
                    out.append(Setting(task, f"k{k} s{s:g}", s, str(k), 1,
                                       lambda h, w, g, kernel=kernel, s=s: Blur(kernel, sigma_from_255(s), boundary)))
        elif task in ("sr2", "sr4"):
            f = int(task[2:])
            kernel, label = sr_task_kernel(f, sr_kernel_kind)
            out.append(Setting(task, f"x{f} s{sr_noise:g}", sr_noise, label, f,
                               lambda h, w, g, kernel=kernel, f=f: SuperResolution(kernel, f, sigma_from_255(sr_noise),
                                                                                   boundary)))
        elif task == "inpaint_random":
            out.append(Setting(task, "50% s2.55", 2.55, "", 1,
                               lambda h, w, g: Inpainting(random_mask(h, w, 0.5, generator=g), sigma_from_255(2.55))))
        elif task == "inpaint_boxes":
            out.append(Setting(task, "3 boxes s2.55", 2.55, "", 1,
                               lambda h, w, g: Inpainting(random_box_mask(h, w, g), sigma_from_255(2.55))))
        else:
            raise SystemExit(f"unknown task {task!r}; use some of {', '.join(TASKS)}")
    return out


def centre_crop(x: Tensor, size: int | None, multiple: int = 1) -> Tensor:
    """CHW centre crop to at most size x size, then to a multiple of ``multiple`` on each side."""
    h, w = x.shape[-2:]
    th, tw = (min(h, size), min(w, size)) if size else (h, w)
    th, tw = th - th % multiple, tw - tw % multiple
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top:top + th, left:left + tw]


def frame_shape(setting: Setting, hw: tuple[int, int]) -> tuple[int, int]:
    """The size the rows of ``setting`` are scored at for a crop of ``hw``: all of it, or y's frame when valid."""
    op = setting.make(*hw, torch.Generator().manual_seed(0))
    return tuple(op.frame(torch.empty(1, 1, *hw, device="meta")).shape[-2:])


def observation(setting: Setting, clean: Tensor, seed: int, device: torch.device) -> tuple[object, Tensor]:
    """The protocol's degraded image of ``clean`` [1, C, H, W] under ``setting``: (operator, y), both on ``device``.
    One generator seeded ``seed`` (the run's seed + the image's index in its folder) draws the mask if any, then the
    noise (added in float64)."""
    gen = torch.Generator().manual_seed(seed)
    op = setting.make(*clean.shape[-2:], gen)  # masks drawn first, then the noise, from one generator
    y = op.degrade(clean.double(), gen).float().to(device)
    return op.to(device), y


def load_images(folder: Path, limit: int | None, crop: int | None, resize: int | None,
                start: int = 0, channels: int = 3) -> list[tuple[int, str, Tensor]]:
    """(index in the sorted folder, name, image) of images start .. start + limit - 1, in ``channels`` channels
    (1: grey, degraded and restored as grey images)."""
    files = list_images(folder)
    stop = start + limit if limit else len(files)
    out = []
    for index, f in enumerate(files[start:stop], start=start):
        x = read_image(f, channels=channels)
        if resize:  # shorter side to ``resize`` (antialiased), e.g. 1024 px faces to the prior's scale
            h, w = x.shape[-2:]
            r = resize / min(h, w)
            x = torch.nn.functional.interpolate(x[None], size=(round(h * r), round(w * r)), mode="bicubic",
                                                antialias=True, align_corners=False)[0].clamp(0, 1)
        out.append((index, f.stem, centre_crop(x, crop)))
    return out


# ------------------------------------------------------------------------------------------- metrics
def psnr(estimate: Tensor, clean: Tensor) -> float:
    mse = float(((estimate.clamp(0, 1).double() - clean.double()) ** 2).mean())
    return 10 * math.log10(1 / mse) if mse > 0 else float("inf")


def ssim(estimate: Tensor, clean: Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure
    return float(structural_similarity_index_measure(estimate.clamp(0, 1).double(), clean.double(), data_range=1.0))


def lpips_weights() -> Path:
    """Where torchvision keeps the AlexNet weights that LPIPS needs (torch hub's cache; never downloaded here)."""
    from torchvision.models import AlexNet_Weights
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.DEFAULT.url).name


def lpips_metric(mode: str, device: torch.device) -> tuple[Callable[[Tensor, Tensor], float] | None, str]:
    """(estimate, clean) -> LPIPS (AlexNet; lower is better), or None and the reason it is left out."""
    if mode == "off":
        return None, "LPIPS off (--lpips off)"
    weights = lpips_weights()
    if not weights.is_file():  # checked first: torchvision would download them
        return None, (f"LPIPS not computed: no AlexNet weights at {weights} (put torchvision's "
                      f"{weights.name} there to add it; nothing is downloaded)")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()

    def score(estimate: Tensor, clean: Tensor) -> float:
        if min(clean.shape[-2:]) < 32:  # AlexNet's pooling needs at least 32 pixels a side
            return float("nan")
        with torch.no_grad():
            value = float(metric(estimate.clamp(0, 1).float(), clean.float()))
        metric.reset()
        return value

    return score, f"LPIPS: AlexNet (torchmetrics), weights {weights.name}"


# ------------------------------------------------------------------------------------------- methods
def hvae_settings(args: argparse.Namespace, setting: Setting) -> dict:
    """gamma (0-255), tau, tau_end, iterations, return for ``setting`` (its task, noise and SR factor): preset,
    then overrides."""
    key = PRESET_KEY[setting.task]
    values = preset_for(args.preset_values, key, setting.noise255,  # preset_values: read once at the start of main
                        setting.factor if key == "sr" else None)
    for key, override in (("gamma", args.gamma), ("tau", args.tau), ("iterations", args.iters),
                          ("return", args.return_estimate)):
        if override is not None:
            values[key] = override
    values["tau"], values["tau_end"] = parse_tau(values["tau"])
    return values


def tau_text(v: dict) -> str:
    return f"{v['tau']}" if v["tau_end"] is None else f"{v['tau']}:{v['tau_end']}"


def tv_lam(args: argparse.Namespace, sigma: float) -> float:
    return args.tv_c * sigma


def load_bm3d():
    """deepinv's BM3D denoiser, or None with a printed note when the optional extra is missing."""
    try:
        from deepinv.models import BM3D
        return BM3D()
    except Exception as err:  # ImportError, or bm3d missing inside deepinv
        print(f"# note: pnp-bm3d skipped ({type(err).__name__}: {err}); install it with pip install -e '.[bench]'")
        return None


@torch.no_grad()
def pnp_bm3d(y: Tensor, operator, denoiser, iters: int = 8, lam: float = 1.0,
             s_start: float = 50 / 255) -> tuple[Tensor, int]:
    """HQS as in DPIR (Zhang et al. 2021) with BM3D as the denoiser: for k = 1..K,
    x_k = argmin_x ||A x - y||^2 / (2 sigma^2) + lam ||x - z_{k-1}||^2 / (2 s_k^2)
        = prox_l2(z_{k-1}, y, s_k / sqrt(lam)),
    z_k = BM3D(x_k, s_k), with s_k geometric from s_start to max(sigma, 2.55/255); returns z_K.
    lam weighs the prior against the data (DPIR: 0.23); ``--tune-bm3d`` picks it on validation crops."""
    s_end = max(operator.sigma, 2.55 / 255)
    sched = [s_start * (s_end / s_start) ** (k / max(1, iters - 1)) for k in range(iters)]
    z = operator.init(y)
    for s in sched:
        x = operator.prox_l2(z, y, s / math.sqrt(lam))
        z = denoiser(x.detach().float().cpu(), s).to(device=y.device, dtype=y.dtype)
    return z, iters


def run_method(method: str, y: Tensor, op, prior, args: argparse.Namespace, setting: Setting,
               bm3d) -> tuple[Tensor, int]:
    if method in ("pnp-hvae", "adam"):
        hv = hvae_settings(args, setting)
        common = dict(gamma=hv["gamma"] / 255, tau=hv["tau"], tau_end=hv["tau_end"], return_estimate=hv["return"],
                      precision=args.precision)
        hv_op = prior_operator(op, y.shape[1], prior.image_channels)  # grey images through a colour prior
        if method == "pnp-hvae":
            r = jpmap(y, hv_op, prior, JPMAPConfig(max_iters=int(hv["iterations"]), channels_last=args.channels_last,
                                                compile=args.compile, bf16_state=args.bf16_state,
                                                fuse_nets=args.fuse_nets, **common))
        else:
            r = adam_joint(y, hv_op, prior, AdamConfig(lr=args.adam_lr, max_iters=args.adam_iters, **common))
        return from_prior_channels(r.estimate, y.shape[1]), r.iterations
    if method == "bicubic":
        return op.init(y), 0
    if method == "wiener":
        r = tikhonov(y, op, grad_std=args.wiener_grad_std)
        return r.estimate, r.iterations
    if method == "tv":
        r = total_variation(y, op, lam=tv_lam(args, op.sigma))
        return r.estimate, r.iterations
    if method == "pnp-bm3d":
        return pnp_bm3d(y, op, bm3d, args.bm3d_iters, args.bm3d_lam)
    if method in ("pnp-hvae-circ", "wiener-circ"):  # what a circular model makes of y: restored on y's own grid
        return run_method(method[:-5], y, op.circular(), prior, args, setting, bm3d)
    raise ValueError(method)


# ------------------------------------------------------------------------------------------- reporting
def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "CPU"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        name = f"{name}, {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}; python {platform.python_version()}"


def fmt(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else "nan"


def has_lpips(rows: list[dict]) -> bool:
    return bool(rows) and all(str(r.get("lpips", "")) not in ("", "nan") for r in rows)


def tables(rows: list[dict], methods: Sequence[str]) -> str:
    """Markdown: per task, PSNR / SSIM (/ LPIPS where every row of a cell has it) means per setting (rows) and
    method (columns), then seconds and iterations."""
    out = []
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        sub = [r for r in rows if r["task"] == task]
        present = [m for m in methods if any(r["method"] == m for r in sub)]
        cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in sub:
            cell[(r["setting"], r["method"])].append(r)
        settings = list(dict.fromkeys(r["setting"] for r in sub))
        n_img = len({r["image"] for r in sub})
        lp = " / LPIPS" if any(has_lpips(v) for v in cell.values()) else ""
        out.append(f"**{task}** (PSNR dB / SSIM{lp}, mean over {n_img} images)\n")
        out.append("| setting | " + " | ".join(present) + " |")
        out.append("|---|" + "---|" * len(present))
        for s in settings + (["**mean**"] if len(settings) > 1 else []):
            vals = []
            for m in present:
                rs = [r for r in sub if r["method"] == m] if s == "**mean**" else cell[(s, m)]
                text = f"{fmt(mean(rs, 'psnr'))} / {fmt(mean(rs, 'ssim'), 3)}" if rs else "-"
                if lp and rs:
                    text += f" / {fmt(mean(rs, 'lpips'), 3)}" if has_lpips(rs) else " / -"
                vals.append(text)
            out.append(f"| {s} | " + " | ".join(vals) + " |")
        secs = [f"{fmt(mean([r for r in sub if r['method'] == m], 'seconds'), 1)} s, "
                f"{fmt(mean([r for r in sub if r['method'] == m], 'iterations'), 0)} it" for m in present]
        out.append("| seconds, iterations per image | " + " | ".join(secs) + " |")
        out.append("")
    return "\n".join(out)


def merge_rows(paths: Sequence[Path], keys: set[tuple], methods: Sequence[str]) -> list[dict]:
    """Rows of other methods from earlier runs' CSVs, one per (image, setting) of this run for each method.

    keys: (dataset, image, task, setting, height, width, kernel) of this run (an SR row made with another
    ``--sr-kernel`` is another setting). Rows of methods this run computes, or of
    (image, setting) pairs outside it, are left out; a method must cover, over all the CSVs together, every key
    of each task it has rows for here (so that its means are over the same images and settings as the others').
    A row that several CSVs hold (same method, image and setting) comes from the last of them: a rerun, given
    after the CSV it updates, replaces its rows.
    """
    merged: dict[tuple, dict] = {}
    has_rows: set[tuple[str, str]] = set()  # (method, task) of the merged methods
    for path in paths:
        try:
            with open(path, newline="") as f:
                found = list(csv.DictReader(f))
        except OSError as err:
            raise SystemExit(f"error: --merge {path}: {err.strerror or err}") from None
        if not found or not set(REQUIRED) <= set(found[0]):
            raise SystemExit(f"error: --merge {path}: not a CSV of benchmarks/quality.py (columns {', '.join(REQUIRED)})")
        for line, r in enumerate(found, start=2):
            try:
                key = (r["dataset"], r["image"], r["task"], r["setting"], int(r["height"]), int(r["width"]), r["kernel"])
                float(r["psnr"]), float(r["ssim"]), float(r["seconds"]), int(r["iterations"])
            except (TypeError, ValueError):
                raise SystemExit(f"error: --merge {path}: line {line} is malformed (a number expected in "
                                 "height, width, psnr, ssim, seconds, iterations)") from None
            if r["method"] not in methods:
                has_rows.add((r["method"], r["task"]))
                if key in keys:
                    merged[key + (r["method"],)] = {**r, "height": key[4], "width": key[5]}
    for m, task in sorted(has_rows):  # over all the CSVs together: runs on other images add up
        missing = [k for k in keys if k[2] == task and k + (m,) not in merged]
        if missing:
            d, image, task, setting, h, w, kernel = sorted(missing)[0]
            kernel = f" ({kernel} kernel)" if task.startswith("sr") else ""
            raise SystemExit(f"error: --merge: {m} has no row for {task} {setting}{kernel} on {image} ({h}x{w}) of {d} "
                             f"in {', '.join(map(str, paths))}; run it with the same images, --crop, --tasks and "
                             "settings")
    return list(merged.values())


def mean(rows: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in rows]
    return sum(vals) / len(vals) if vals else float("nan")


def write_csv(path: Path, rows: list[dict], fields: Sequence[str] = FIELDS) -> None:
    """Whole rewrite through a temporary file and a rename: a reader (or --merge of the same path) never sees
    half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in fields})
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- figures
@contextlib.contextmanager
def recording_adam(record: Callable[[Tensor], None]):
    """Within the block, torch.optim.Adam reports its first parameter (x in adam_joint) after every step."""
    original = torch.optim.Adam

    class Recording(original):
        def step(self, closure=None):
            out = super().step(closure)
            record(self.param_groups[0]["params"][0].detach())
            return out

    torch.optim.Adam = Recording
    try:
        yield
    finally:
        torch.optim.Adam = original


def line_plot(path: Path, series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str,
              ylabel: str, logy: bool = False) -> None:
    """One PNG with a line per series: matplotlib when importable, else a minimal PIL drawing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _pil_plot(path, series, title, xlabel, ylabel, logy)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, ms=3, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pil_plot(path, series, title, xlabel, ylabel, logy) -> None:
    from PIL import Image, ImageDraw
    W, H, m = 600, 400, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    t = (lambda v: math.log10(v)) if logy else (lambda v: v)
    pts = [(x, t(y)) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not logy)]
    if not pts:
        return img.save(path)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda x: m + (x - x0) / (x1 - x0) * (W - 2 * m)  # noqa: E731
    sy = lambda y: H - m - (y - y0) / (y1 - y0) * (H - 2 * m)  # noqa: E731
    d.rectangle([m, m, W - m, H - m], outline="black")
    d.text((m, 10), title, fill="black")
    d.text((W // 2 - 30, H - 25), xlabel, fill="black")
    d.text((5, m - 20), f"{ylabel}{' (log10)' if logy else ''}", fill="black")
    for v, y in ((y0, H - m), (y1, m)):
        d.text((5, y - 5), f"{v:.3g}", fill="black")
    for v, x in ((x0, m), (x1, W - m)):
        d.text((x - 10, H - m + 5), f"{v:g}", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
    for i, (name, (xs, ys)) in enumerate(series.items()):
        c = colours[i % len(colours)]
        p = [(sx(x), sy(t(y))) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not logy)]
        if len(p) > 1:
            d.line(p, fill=c, width=2)
        d.text((W - m - 120, m + 8 + 14 * i), name, fill=c)
    img.save(path)


def figures(args: argparse.Namespace, images, prior, device, fig_dir: Path) -> list[str]:
    """Convergence (residual, PSNR per iteration: JPMAP vs Adam) and PSNR against tau, on the first image."""
    idx, name, clean = images[0]
    fig_dir.mkdir(parents=True, exist_ok=True)
    setting = build_settings(["deblur"], Path(args.kernels), [9], [7.65])[0]
    op, y = observation(setting, clean[None], args.seed + idx, device)  # the same y as in the table
    clean = clean[None].to(device)
    hv = hvae_settings(args, setting)
    common = dict(gamma=hv["gamma"] / 255, tau=hv["tau"], tau_end=hv["tau_end"], return_estimate=hv["return"])
    jp_psnr: list[float] = []
    r_jp = jpmap(y, op, prior, JPMAPConfig(max_iters=int(hv["iterations"]), tol=0.0, **common),
                 callback=lambda k, x: jp_psnr.append(psnr(x, clean)))
    ad_psnr: list[float] = []
    with recording_adam(lambda x: ad_psnr.append(psnr(x, clean))):
        r_ad = adam_joint(y, op, prior, AdamConfig(lr=args.adam_lr, max_iters=args.fig_adam_iters, **common))
    it_jp, it_ad = list(range(1, len(jp_psnr) + 1)), list(range(1, len(ad_psnr) + 1))
    tag = f"{name}, kernel 9, noise 7.65"
    written = []
    p1, p2, p3 = fig_dir / "quality_residual.png", fig_dir / "quality_psnr_iterations.png", fig_dir / "quality_tau.png"
    line_plot(p1, {"JPMAP": (list(range(1, len(r_jp.history.residual) + 1)), r_jp.history.residual),
                   "Adam": (list(range(1, len(r_ad.history.residual) + 1)), r_ad.history.residual)},
              f"RMS residual ||x_k - x_k-1|| ({tag})", "iteration", "residual", logy=True)
    line_plot(p2, {"JPMAP": (it_jp, jp_psnr), "Adam": (it_ad, ad_psnr)},
              f"PSNR of x_k ({tag})", "iteration", "PSNR (dB)")
    written += [str(p1), str(p2)]
    taus = [round(0.5 + 0.1 * i, 2) for i in range(6)]
    est_psnr, x_psnr = [], []
    for tau in taus:
        r = jpmap(y, op, prior, JPMAPConfig(max_iters=int(hv["iterations"]), **{**common, "tau": tau, "tau_end": None}))
        est_psnr.append(psnr(r.estimate, clean))
        x_psnr.append(psnr(r.x, clean))
        print(f"# figure: tau {tau:g}: PSNR {hv['return']} {est_psnr[-1]:.2f}, x_K {x_psnr[-1]:.2f}", flush=True)
    series = {f"JPMAP returned ({hv['return']})": (taus, est_psnr)}
    if hv["return"] != "x":
        series["JPMAP x_K"] = (taus, x_psnr)
    line_plot(p3, series, f"PSNR against tau ({tag}, gamma {hv['gamma']:g}/255)", "tau", "PSNR (dB)")
    written.append(str(p3))
    print(f"# figure: JPMAP final PSNR(x) {jp_psnr[-1]:.2f} after {len(jp_psnr)} it, "
          f"Adam {ad_psnr[-1]:.2f} after {len(ad_psnr)} it", flush=True)
    return written


# ------------------------------------------------------------------------------------------- TV tuning
def tune_on_validation(args: argparse.Namespace, label: str, name: str, grid: Sequence[float],
                       restore: Callable[[Tensor, Blur, float], Tensor]) -> float:
    """The value of ``grid`` for which ``restore(y, operator, value)`` has the best mean PSNR on 2 validation crops
    of --tune-folder (never test images), deblurred with kernel 9 at the three deblurring noise levels."""
    folder = Path(args.tune_folder)
    val = split_files(list_images(folder), 0.05, 0, root=folder)[1][:2]
    clean = torch.stack([centre_crop(read_image(f, channels=3), args.crop or 128) for f in val])
    kernel = load_kernel(Path(args.kernels) / "9.npy")
    scores = {v: [] for v in grid}
    for s in (2.55, 7.65, 12.75):
        op = Blur(kernel, sigma_from_255(s))
        y = op.degrade(clean.double(), torch.Generator().manual_seed(args.seed)).float()
        for v in grid:
            scores[v] += [psnr(e[None], x[None]) for e, x in zip(restore(y, op, v), clean)]
    print(f"# {label} tuning on validation crops " + ", ".join(p.name for p in val) + ": "
          + ", ".join(f"{name}={v:g}: {sum(r) / len(r):.2f} dB" for v, r in scores.items()), flush=True)
    return max(grid, key=lambda v: sum(scores[v]))


def tune_tv(args: argparse.Namespace, grid: Sequence[float] = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8)) -> float:
    """c of lam = c * sigma maximising the mean PSNR on the validation problems (see tune_on_validation)."""
    return tune_on_validation(args, "TV", "c", grid,
                              lambda y, op, c: total_variation(y, op, lam=c * op.sigma).estimate)


def tune_bm3d(args: argparse.Namespace, denoiser, grid: Sequence[float] = (0.1, 0.23, 0.5, 1.0)) -> float:
    """PnP-BM3D's lam maximising the mean PSNR on the validation problems (see tune_on_validation)."""
    return tune_on_validation(args, "PnP-BM3D", "lam", grid,
                              lambda y, op, lam: pnp_bm3d(y, op, denoiser, args.bm3d_iters, lam)[0])


# ------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="natural")
    p.add_argument("--folder", type=Path, help="test images (default: CBSD68 for natural, CelebAHQ for faces)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3,
                   help="1: read the images grey and restore them as grey images (Set12; through a colour prior "
                        "with restore.operators.GreyObservation)")
    p.add_argument("--prior", type=Path, help="prior export (default priors/<natural|faces>.pt)")
    p.add_argument("--preset", type=Path, help="restoration presets (default configs/restore/<dataset>.yaml, "
                                               "falling back to natural.yaml)")
    p.add_argument("--kernels", type=Path, default=SHARED / "kernels")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--deblur-kernels", type=int, nargs="+", default=[4, 7, 9, 11])
    p.add_argument("--deblur-noises", type=float, nargs="+", default=[2.55, 7.65, 12.75])
    p.add_argument("--sr-noise", type=float, default=2.55, help="noise of sr2/sr4 (0-255 scale; faces: 3)")
    p.add_argument("--sr-kernel", choices=SR_KERNEL_CHOICES, default="bicubic",
                   help="sr2/sr4's down-sampling kernel (see Tasks above)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                   help="pnp-hvae-circ, wiener-circ (with --boundary valid): the circular model on the same y")
    p.add_argument("--boundary", choices=["circular", "valid"], default="circular",
                   help="deblur, sr2, sr4: circular (the published protocol) or valid (a photograph: y holds only "
                        "the outputs whose kernel support lies inside the crop; scored on y's frame)")
    p.add_argument("--limit", type=int, help="N images (sorted by name)")
    p.add_argument("--start", type=int, default=0, help="skip the first N images; the noise seed follows the "
                   "image's index in the folder, so runs on --start 0 --limit 3 and --start 3 add up to --limit 6")
    p.add_argument("--crop", type=int, help="centre crop S x S (for CPU runs)")
    p.add_argument("--resize", type=int, help="resize the shorter side to this before cropping (faces: 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, help="override the preset's gamma (0-255 scale)")
    p.add_argument("--tau", help="override the preset's tau (value, comma list or START:END)")
    p.add_argument("--iters", type=int, help="override the preset's JPMAP iterations")
    p.add_argument("--return", dest="return_estimate", choices=["x", "decoded"], help="override the preset's return")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="network passes of pnp-hvae and adam (bf16 autocast; data steps stay fp32): bf16 is for GPUs")
    p.add_argument("--channels-last", action="store_true", help="pnp-hvae network passes in NHWC (GPU fast path)")
    p.add_argument("--compile", action="store_true", help="torch.compile pnp-hvae's z-step (GPU fast path)")
    p.add_argument("--bf16-state", action="store_true",
                   help="with --precision bf16: pnp-hvae's decoder residual stream in bf16 too (JPMAPConfig.bf16_state)")
    p.add_argument("--fuse-nets", action="store_true",
                   help="pnp-hvae's decoder groups run their prior and posterior nets as one (JPMAPConfig.fuse_nets)")
    p.add_argument("--adam-iters", type=int, default=200)
    p.add_argument("--adam-lr", type=float, default=1e-2)
    p.add_argument("--wiener-grad-std", type=float, default=0.1)
    p.add_argument("--tv-c", type=float, default=0.1, help="TV weight lam = c * sigma (sigma on the [0, 1] scale)")
    p.add_argument("--tune-tv", action="store_true", help="choose --tv-c on 2 validation crops first")
    p.add_argument("--tune-folder", type=Path, default=SHARED / "train" / "natural-CBSD432")
    p.add_argument("--bm3d-iters", type=int, default=8)
    p.add_argument("--bm3d-lam", type=float, default=0.23, help="PnP-BM3D's prior weight lam (DPIR's 0.23)")
    p.add_argument("--tune-bm3d", action="store_true", help="choose --bm3d-lam on 2 validation crops first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lpips", choices=["auto", "off"], default="auto",
                   help="auto: LPIPS when the AlexNet weights are in torch hub's cache (never downloaded)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--figures", action="store_true")
    p.add_argument("--fig-adam-iters", type=int, default=200, help="Adam iterations in the convergence figure")
    p.add_argument("--fig-dir", type=Path, default=ROOT / "docs")
    p.add_argument("--out", type=Path, help="CSV (default out/quality_<dataset>.csv: pass docs/... to update the committed one)")
    p.add_argument("--tables", type=Path, help="markdown tables (default: the CSV's path with .md, so that a run never overwrites another's tables)")
    p.add_argument("--note", default="", help="a line added under the tables (what was reduced and why)")
    p.add_argument("--merge", type=Path, nargs="+", default=[],
                   help="CSVs of earlier runs of other methods on the same images, crop, tasks and --seed (for "
                        "example pnp-bm3d run apart): their rows join this run's CSV and tables; where several "
                        "hold the same row, the last one given wins")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder_d, prior_d, preset_d = DATASETS[args.dataset]
    args.folder = args.folder or folder_d
    args.prior = args.prior or prior_d
    args.preset = args.preset or (preset_d if preset_d.is_file() else DATASETS["natural"][2])
    args.resize = args.resize or (256 if args.dataset == "faces" else None)
    args.out = args.out or ROOT / "out" / f"quality_{args.dataset}.csv"
    args.tables = args.tables or args.out.with_suffix(".md")
    try:
        args.preset_values = read_presets(args.preset)
    except PresetError as err:
        raise SystemExit(f"error: --preset: {err}") from None
    device = torch.device(args.device)
    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in argv)
    machine = machine_line(device)
    print(f"# {machine}\n# {command}", flush=True)

    if args.start < 0 or (args.limit is not None and args.limit < 1):
        raise SystemExit("error: --start must be >= 0 and --limit >= 1")
    if args.bf16_state and args.precision != "bf16":
        raise SystemExit("error: --bf16-state needs --precision bf16")
    images = load_images(Path(args.folder), args.limit, args.crop, args.resize, args.start, args.channels)
    if not images:
        raise SystemExit(f"error: no images in {args.folder} from --start {args.start}; pass a smaller --start")
    if args.boundary == "valid" and not set(args.tasks) <= {"deblur", "sr2", "sr4"}:
        raise SystemExit("error: --boundary valid is for --tasks deblur, sr2 and sr4 only")
    if args.boundary != "valid" and {"pnp-hvae-circ", "wiener-circ"} & set(args.methods):
        raise SystemExit("error: pnp-hvae-circ and wiener-circ compare models on a valid blur: add --boundary valid")
    settings = build_settings(args.tasks, Path(args.kernels), args.deblur_kernels, args.deblur_noises, args.sr_noise,
                              args.boundary, args.sr_kernel)
    keys = {(args.dataset, name, s.task, s.name, *frame_shape(s, centre_crop(full, None, s.factor).shape[-2:]), s.kernel)
            for s in settings for _, name, full in images}  # the rows' sizes: what is scored
    methods = list(args.methods)
    prior = None
    if {"pnp-hvae", "adam"} & set(methods) or args.figures:
        if not Path(args.prior).is_file():
            raise SystemExit(f"prior {args.prior} not found; train one (configs/{args.dataset}.yaml) or pass --prior")
        from hvae.export import load_prior
        prior = load_prior(args.prior, map_location=device)
    bm3d = load_bm3d() if "pnp-bm3d" in methods else None
    if "pnp-bm3d" in methods and bm3d is None:
        methods.remove("pnp-bm3d")
    merged = merge_rows(args.merge, keys, methods)  # checked before anything runs
    lpips, lpips_note = lpips_metric(args.lpips, device)
    print(f"# {lpips_note}", flush=True)
    if args.tune_bm3d and bm3d is not None:
        args.bm3d_lam = tune_bm3d(args, bm3d)
        print(f"# PnP-BM3D: lam = {args.bm3d_lam:g}", flush=True)
    if args.tune_tv and "tv" in methods:
        args.tv_c = tune_tv(args)
        print(f"# TV: c = {args.tv_c:g}", flush=True)

    start, rows = time.perf_counter(), []
    for setting in settings:
        for idx, name, full in images:  # idx: index in the sorted folder
            clean = centre_crop(full, None, setting.factor)[None]
            op, y = observation(setting, clean, args.seed + idx, device)
            clean_d = op.frame(clean.to(device))  # valid blur: y's frame of the scene; else all of it
            for method in methods:
                t = time.perf_counter()
                est, iters = run_method(method, y, op, prior, args, setting, bm3d)
                est = est if method.endswith("-circ") else op.frame(est)  # all on y's frame
                if device.type == "cuda":
                    torch.cuda.synchronize()
                secs = time.perf_counter() - t
                row = dict(dataset=args.dataset, image=name, task=setting.task, setting=setting.name,
                           kernel=setting.kernel, noise255=setting.noise255, method=method, psnr=psnr(est, clean_d),
                           ssim=ssim(est, clean_d), lpips=lpips(est, clean_d) if lpips else "",
                           seconds=secs, iterations=int(iters),
                           height=clean_d.shape[-2], width=clean_d.shape[-1])
                rows.append(row)
                lp = f" LPIPS {row['lpips']:.3f}" if lpips else ""
                print(f"{setting.task:15s} {setting.name:12s} {name:10s} {method:13s} PSNR {row['psnr']:6.2f} "
                      f"SSIM {row['ssim']:.3f}{lp} {secs:7.1f} s {iters:4d} it", flush=True)
            write_csv(args.out, rows + merged)  # partial results survive an interruption, merged rows too

    written = figures(args, images, prior, device, args.fig_dir) if args.figures else []
    elapsed = time.perf_counter() - start
    merged_methods = list(dict.fromkeys(r["method"] for r in merged))
    rows += merged
    hv_text: dict[str, list[str]] = defaultdict(list)  # one entry per distinct setting, naming where it applied
    for s in settings:
        v = hvae_settings(args, s)
        hv_text[f"gamma {v['gamma']:g}/255, tau {tau_text(v)}, {v['iterations']} it, returns {v['return']}"].append(
            f"{s.task} {s.name}")
    crop = f"{args.crop}x{args.crop} centre crops" if args.crop else "full images"
    fast = "".join([f", {args.precision}", ", bf16 state" * args.bf16_state, ", fused nets" * args.fuse_nets,
                    ", channels_last" * args.channels_last,
                    ", compiled" * args.compile])
    settings_of = {  # the settings line describes only what this run computed (merged methods: their own run)
        "pnp-hvae": "pnp-hvae " + "; ".join(f"{', '.join(where)}: {text}" for text, where in hv_text.items()) + fast,
        "adam": f"adam {args.adam_iters} it, lr {args.adam_lr:g}, same gamma/tau/return, {args.precision}",
        "wiener": f"wiener grad std {args.wiener_grad_std:g}",
        "bicubic": "bicubic the operator's start (bicubic up-sampling for SR)",
        "tv": f"tv lam = {args.tv_c:g} * sigma",
        "pnp-bm3d": f"pnp-bm3d HQS {args.bm3d_iters} it, lam {args.bm3d_lam:g}",
        "pnp-hvae-circ": "pnp-hvae-circ as pnp-hvae, with the circular model on y's frame",
        "wiener-circ": "wiener-circ as wiener, with the circular model on y's frame"}
    described = [settings_of[m] for m in methods]
    lines = [f"### Restoration quality: {args.dataset} ({Path(args.folder).name}, {len(images)} images, {crop})", "",
             f"Machine: {machine}. Run time {elapsed / 60:.1f} min (including figures).", "",
             f"Command: `{command}`", "",
             "Settings of the methods this run computed: " + "; ".join(described) + f". Seed {args.seed} + image "
             f"index. {lpips_note}. CSV: `{os.path.relpath(args.out, ROOT)}`.", ""]
    if merged:
        lines += [f"Merged from earlier runs on the same degraded images ({', '.join(merged_methods)}): "
                  + ", ".join(f"`{os.path.relpath(p, ROOT)}`" for p in args.merge) + ".", ""]
    if args.note:
        lines += [args.note, ""]
    lines.append(tables(rows, sorted(methods + merged_methods, key=METHODS.index)))  # one column order
    if written:
        lines += ["Figures (first image, kernel 9, noise 7.65): "
                  + ", ".join(f"`{os.path.relpath(w, ROOT)}`" for w in written), ""]
    text = "\n".join(lines)
    print(text)
    write_csv(args.out, rows)
    args.tables.parent.mkdir(parents=True, exist_ok=True)
    args.tables.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
