"""``python restore.py``: restore an image, or every image of a folder, with PnP-HVAE (JPMAP) or the Adam baseline.

Without arguments it runs the demo: a built-in photograph, motion blur and noise, the shipped prior.
Every input is validated before anything is written; outputs are written atomically at the end (a folder's image
by image: :mod:`restore.folder`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from data.images import DEFAULT_MAX_PIXELS, DataError, atomic_write_bytes, read_image_with_info, write_image
from hvae.export import PriorError, load_prior

from .baselines import AdamConfig, adam_joint, tikhonov
from .jpmap import JPMAPConfig, jpmap
from .noise import NoiseEstimateError, estimate_noise_std
from .presets import PresetError, parse_tau, preset_for, read_presets
from .tiled_cli import _positive, add_tiling_arguments, check_accelerator, tiled_kwargs, use_tiles
from .operators import (BAYER_PATTERNS, SR_KERNELS, Blur, Denoising, Inpainting, OperatorError, SuperResolution,
                        bayer_mask, box_mask, equal_channels, gaussian_kernel, load_kernel, load_mask, masks_per_channel,
                        motion_kernel, prior_operator, random_mask, sigma_from_255, sr_kernel)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRIOR = ROOT / "priors" / "natural.pt"
DEFAULT_PRESET = ROOT / "configs" / "restore" / "natural.yaml"
SSIM_WINDOW = 11  # side of torchmetrics' default Gaussian SSIM window: smaller images get no SSIM


class UsageError(ValueError):
    """A command-line value is wrong; one line saying what to change."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error:`` line (exit code 2) instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="restore.py", description=__doc__.splitlines()[0])
    src = p.add_argument_group("images")
    src.add_argument("--input", type=Path, help="degraded observation y (its operator is described by the flags), "
                                                 "or a folder of them (restore/folder.py)")
    src.add_argument("--clean", type=Path, help="clean image: degraded synthetically with --seed, or the "
                                                 "reference for --input; or a folder of them")
    src.add_argument("--images-per-batch", type=_positive("--images-per-batch"), default=None,
                     help="with folders: images of one size and noise level restored together, each stopping on its "
                          "own residual (default: 1 on a CPU, where batches of 256x256 images ran 1.3-1.7x slower "
                          "per image, 4 on a GPU)")
    src.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help="refuse images with more pixels than this (decompression-bomb guard)")
    op = p.add_argument_group("degradation")
    op.add_argument("--operator", choices=["denoise", "blur", "sr", "inpaint", "demosaic"], default="blur",
                    help="demosaic: one colour per pixel through a Bayer filter (--bayer); --input a grey raw mosaic "
                         "or a colour image with the unobserved channels at 0; the output is colour")
    op.add_argument("--kernel", type=Path, help="blur kernel (.npy or image), centred, any size; with --operator sr "
                                                 "the first pixel of each block is kept after it (may be signed)")
    op.add_argument("--blur-sigma", type=float, help="Gaussian blur kernel of this std in pixels (with --operator sr: "
                                                     "centred on each block, as --sr-kernel gaussian)")
    op.add_argument("--motion-length", type=float, help="straight motion blur of this length in pixels")
    op.add_argument("--scale", type=int, default=2, help="super-resolution factor")
    op.add_argument("--sr-kernel", choices=SR_KERNELS, default=None,
                    help="--operator sr: how the low-resolution image was made, each pixel centred on its block of "
                         "the high-resolution one: bicubic (PIL, MATLAB imresize: the benchmarks' degradation), "
                         "gaussian (std 0.5 x --scale) or box (area average, OpenCV INTER_AREA, a camera's pixel); "
                         "default bicubic (on area-averaged Set5 images it still did better than box, BENCHMARKS.md)")
    op.add_argument("--mask", type=Path, help="inpainting mask image (white = observed)")
    op.add_argument("--bayer", choices=BAYER_PATTERNS, type=str.upper, default="RGGB",
                    help="--operator demosaic: the colour filter's 2x2 pattern from the top-left pixel, row by row")
    op.add_argument("--mask-rate", type=float, default=0.5, help="fraction of missing pixels (random mask)")
    op.add_argument("--mask-box", action="append", default=[], metavar="TOP,LEFT,H,W",
                    help="missing box (repeatable); replaces the random mask")
    op.add_argument("--noise-std", type=noise_std_arg, default=7.65,
                    help="Gaussian noise std on the 0-255 scale, or auto: estimated from --input (patch PCA, "
                         "restore/noise.py; within a few %% of the truth on 8-bit CBSD68 observations up to 25, "
                         "BENCHMARKS.md, Noise estimate)")
    op.add_argument("--boundary", choices=["auto", "circular", "valid"], default="auto",
                    help="blur and sr at the image border: circular (wraps around: the published protocol's "
                         "synthetic degradation) or valid (a real photograph, whose scene goes on past the frame: "
                         "nothing is assumed outside; the output is the observation's frame); auto: valid for "
                         "--input, circular for --clean alone")
    sv = p.add_argument_group("solver")
    sv.add_argument("--prior", type=Path, default=DEFAULT_PRIOR, help="prior export (prior.pt) or .ckpt")
    sv.add_argument("--method", choices=["jpmap", "adam"], default="jpmap")
    sv.add_argument("--preset", type=Path, default=DEFAULT_PRESET,
                    help="YAML of per-operator defaults for --gamma, --tau, --iterations, --return")
    sv.add_argument("--gamma", type=float, default=None, help="coupling std gamma on the 0-255 scale")
    sv.add_argument("--tau", type=str, default=None,
                    help="temperature: one value, a comma list (one per group), or START:END (linear top->bottom)")
    sv.add_argument("--iterations", type=int, default=None)
    sv.add_argument("--tol", type=float, default=1e-4,
                    help="stop when the RMS residual is below this (bf16's residual stays above about 4e-4, its "
                         "rounding, so with bf16 or --fast all --iterations run)")
    sv.add_argument("--divergence-guard", type=float, default=4.0, metavar="FACTOR",
                    help="JPMAP: once the residual exceeds FACTOR x its smallest value, stop and return the "
                         "iterate of that smallest residual (per image or tile); 0 turns it off")
    sv.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (--method adam)")
    sv.add_argument("--return", dest="return_estimate", choices=["x", "decoded"], default=None)
    sv.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the network passes in bfloat16 (the x-step stays fp32), a few 0.01 dB from fp32; "
                         "with --channels-last 1.4-2.2x faster on a CPU with native bf16 (AVX512-BF16, AMX); "
                         "on a GPU, faster with --cuda-graph or --compile (BENCHMARKS.md, Speed)")
    fast = p.add_argument_group("JPMAP fast path (all off by default, see BENCHMARKS.md, Speed and CPU)")
    fast.add_argument("--fast", action="store_true",
                      help="the fastest measured combination without compilation: --precision bf16 --channels-last "
                           "--fuse-nets, and on a GPU --cuda-graph --pointwise-matmul (with --compile: bf16, "
                           "channels_last, fused nets, compiled); a few 0.01 dB from fp32. H200 at 320x448: 20 ms "
                           "per iteration against 50 in fp32 (--compile reduce-overhead: 11 ms after about a minute "
                           "of compilation per shape); on a CPU it needs native bf16 (AVX512-BF16 or AMX)")
    fast.add_argument("--channels-last", action="store_true", help="network passes in NHWC memory layout")
    fast.add_argument("--fuse-nets", action="store_true",
                      help="each decoder group's prior and posterior nets run as one net (fewer convolutions)")
    fast.add_argument("--pointwise-matmul", action="store_true",
                      help="with --channels-last: 1x1 convolutions as matrix products with the bias in the "
                           "epilogue (H200 with --cuda-graph: 15-19%% faster; without it slower at 320x448, its "
                           "extra host time; not faster on this project's CPU)")
    fast.add_argument("--cuda-graph", action="store_true",
                      help="replay the network pass from a CUDA graph captured once per shape (CUDA only)")
    fast.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune"], default=None,
                      help="torch.compile the network pass (one compilation per image or tile shape)")
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    sv.add_argument("--seed", type=int, default=0)
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("out/restore"))
    out.add_argument("--tensorboard", action="store_true", help="log iterates and curves to OUT/tb")
    out.add_argument("--no-progress", action="store_true")
    add_tiling_arguments(p)
    return p


# ---------------------------------------------------------------------------------------------- helpers
def noise_std_arg(text: str) -> float | str:
    """``--noise-std``: a number on the 0-255 scale, or ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number (0-255 scale) nor auto") from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for but no GPU is visible; use --device cpu")
    return device


def make_kernel(args: argparse.Namespace) -> Tensor:
    if args.operator != "sr" and args.sr_kernel is not None:
        raise UsageError(f"--sr-kernel is for --operator sr; drop it for --operator {args.operator}")
    if sum(v is not None for v in (args.kernel, args.blur_sigma, args.motion_length, args.sr_kernel)) > 1:
        raise UsageError("give one kernel: --kernel, --blur-sigma, --motion-length or --sr-kernel")
    if args.kernel is not None:
        return load_kernel(args.kernel, signed=args.operator == "sr")
    if args.blur_sigma is not None:
        if not args.blur_sigma > 0:
            raise UsageError(f"--blur-sigma must be > 0, got {args.blur_sigma}")
        if args.operator == "sr":  # centred on each block, as the low-resolution pixel is
            return sr_kernel(args.scale, "gaussian", args.blur_sigma)
        return gaussian_kernel(args.blur_sigma)
    if args.motion_length is not None:
        return motion_kernel(size=int(2 * math.ceil(args.motion_length / 2) + 1), length=args.motion_length)
    if args.operator == "sr":
        return sr_kernel(args.scale, args.sr_kernel or "bicubic")
    raise UsageError("--operator blur needs --kernel FILE, --blur-sigma S or --motion-length L")


def make_operator(args: argparse.Namespace, hw: tuple[int, int], sigma: float, have_observation: bool,
                  mask_file: Path | None = None, generator: torch.Generator | None = None):
    """The operator of the flags for a restored image of size ``hw``. Inpainting's mask: ``mask_file`` (default
    ``--mask``; an observation needs one), else ``--mask-box``, else a random mask drawn from ``generator``
    (default: seeded ``--seed``)."""
    if args.operator == "denoise":
        return Denoising(sigma)
    if args.operator == "blur":
        return Blur(make_kernel(args), sigma, padding=args.boundary)
    if args.operator == "sr":
        return SuperResolution(make_kernel(args), args.scale, sigma, padding=args.boundary)
    if args.operator == "demosaic":
        return Inpainting(bayer_mask(*hw, args.bayer), sigma)
    mask_file = args.mask if mask_file is None else mask_file
    if mask_file is not None or have_observation:
        return Inpainting(read_mask(mask_file, hw), sigma)
    if args.mask_box:
        try:
            boxes = [tuple(int(v) for v in b.split(",")) for b in args.mask_box]
        except ValueError:
            raise UsageError("--mask-box takes TOP,LEFT,H,W integers") from None
        if any(len(b) != 4 for b in boxes):
            raise UsageError("--mask-box takes exactly four integers TOP,LEFT,H,W")
        mask = box_mask(*hw, boxes)
    else:
        generator = torch.Generator().manual_seed(args.seed) if generator is None else generator
        mask = random_mask(*hw, args.mask_rate, generator=generator)
    return Inpainting(mask, sigma)


def check_colour_clean(args: argparse.Namespace, clean: Tensor, name: str = "--clean") -> None:
    """Demosaicing restores colour: a grey clean image (to mosaic, or as the reference) is refused."""
    if args.operator == "demosaic" and clean.shape[0] != 3:
        raise UsageError(f"--operator demosaic restores colour: {name} has {clean.shape[0]} channel(s), give a "
                         "colour image")


def as_observation(args: argparse.Namespace, image: Tensor, name: str = "--input") -> Tensor:
    """An observation file's image [C, H, W] as the operator sees it: with ``--operator demosaic`` a grey raw mosaic
    becomes three equal channels (the Bayer mask keeps one per pixel) and a colour one is taken as it is; otherwise
    a grey image stored in equal colour channels is the grey image it is (its one noise, not three; restored grey)."""
    if args.operator != "demosaic":
        return image[:1] if equal_channels(image) else image
    if image.shape[0] == 3:
        return image
    if image.shape[0] != 1:
        raise UsageError(f"{name} has {image.shape[0]} channels; --operator demosaic takes a grey raw mosaic or a "
                         "colour image")
    return image.expand(3, *image.shape[-2:]).contiguous()


def read_mask(path: Path | None, hw: tuple[int, int]) -> Tensor:
    """The mask file ``path`` (``--mask``), checked against the image's size (an observation needs one)."""
    if path is None:
        raise UsageError("--operator inpaint with --input needs --mask FILE (which pixels are observed)")
    mask = load_mask(path)
    if tuple(mask.shape[-2:]) != tuple(hw):
        raise UsageError(f"mask {path.name} is {mask.shape[-2]}x{mask.shape[-1]} but the image is {hw[0]}x{hw[1]}; "
                         "give a mask of the image's size")
    return mask


def solution_hw(args: argparse.Namespace, y_hw: tuple[int, int]) -> tuple[int, int]:
    """The restored image's size for an observation of size ``y_hw`` (``sr``: ``--scale`` times larger)."""
    return (y_hw[0] * args.scale, y_hw[1] * args.scale) if args.operator == "sr" else tuple(y_hw)


def clean_for_scale(args: argparse.Namespace, clean: Tensor) -> Tensor:
    """A clean image to degrade: for ``sr``, cropped to a multiple of ``--scale`` (refused if smaller than it)."""
    if args.operator != "sr":
        return clean
    h, w = clean.shape[-2:]
    if min(h, w) < args.scale:
        raise UsageError(f"--clean image {h}x{w} is smaller than --scale {args.scale}; give a larger image")
    return clean[:, : h - h % args.scale, : w - w % args.scale]


def degrade_clean(operator, clean: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(y, reference) of a clean [C, H, W] image degraded synthetically (float64 on the CPU, ``generator``'s
    noise); the reference is the part of the scene the restored image shows (a valid operator's frame)."""
    if getattr(operator, "padding", "circular") == "valid":  # x's grid = margins around the frame
        (t, b), (l, r) = operator.margins
        if min(clean.shape[-2] - t - b, clean.shape[-1] - l - r) < operator.factor:
            raise UsageError(f"--clean image {clean.shape[-2]}x{clean.shape[-1]} has no pixel inside this "
                             f"kernel's margins ({t + b} rows, {l + r} columns); --boundary valid needs a larger image")
    y = operator.degrade(clean[None].double(), generator=generator)[0].float()
    return y, operator.frame(clean[None])[0]


def reference_for(args: argparse.Namespace, operator, y: Tensor, clean: Tensor) -> Tensor:
    """What the restoration of the observation ``y`` is compared with, given ``--clean`` as its reference: the
    scene (framed by a valid operator) or, with ``--boundary valid``, the frame itself; refused if neither fits."""
    if y.shape[0] == 1 and equal_channels(clean):  # a grey reference stored in colour, as the observation may be
        clean = clean[:1]
    if y.shape[0] != clean.shape[0]:
        raise UsageError("--input and --clean have different numbers of channels")
    x_hw = tuple(operator.x_shape(tuple(y[None].shape)))[-2:]
    if x_hw == tuple(clean.shape[-2:]):
        return operator.frame(clean[None])[0]
    if args.boundary == "valid" and tuple(clean.shape[-2:]) == (y.shape[-2] * operator.factor,
                                                               y.shape[-1] * operator.factor):
        return clean
    raise UsageError(f"--input {tuple(y.shape[-2:])} and --clean {tuple(clean.shape[-2:])} do not match for "
                     f"--operator {args.operator}" + (f" with --scale {args.scale}" if args.operator == "sr" else ""))


def to_prior_channels(x: Tensor, prior_channels: int) -> Tensor:
    """[B, C, H, W] observations -> the prior's batch: colour through a grey prior runs channel by channel
    ([B * C, 1, H, W]); grey through a colour prior stays grey (its operator:
    :func:`restore.operators.prior_operator`)."""
    b, c, h, w = x.shape
    if c == prior_channels or c == 1:
        return x
    if prior_channels == 1:
        return x.reshape(b * c, 1, h, w)
    raise UsageError(f"images of {c} channels cannot be restored with a prior of {prior_channels}; "
                     "give grey or colour images")


def from_prior_channels(x: Tensor, channels: int) -> Tensor:
    """The prior's batch -> [B, channels, H, W] images (the inverse of :func:`to_prior_channels`; a grey image's
    equal channels averaged)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.reshape(-1, channels, *x.shape[-2:])
    return x.mean(1, keepdim=True)


def metrics_of(estimate: Tensor, clean: Tensor) -> dict[str, float | None]:
    """PSNR and SSIM of [1, C, H, W] images; SSIM is None for images smaller than its window."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    est = estimate.clamp(0, 1).double()
    ref = clean.double()
    ssim = (float(structural_similarity_index_measure(est, ref, data_range=1.0))
            if min(ref.shape[-2:]) >= SSIM_WINDOW else None)
    return {"psnr": float(peak_signal_noise_ratio(est, ref, data_range=1.0)), "ssim": ssim}


# ---------------------------------------------------------------------------------------------- main job
def apply_preset(args: argparse.Namespace) -> None:
    """Fills --gamma, --tau, --iterations, --return not given on the command line from the preset's
    setting for the operator at --noise-std (then from built-in fallbacks)."""
    try:
        values = preset_for(read_presets(args.preset) if args.preset is not None else {}, args.operator,
                            args.noise_std, args.scale if args.operator == "sr" else None)
    except PresetError as err:
        raise UsageError(f"--preset: {err}") from None
    for key, dest in (("gamma", "gamma"), ("tau", "tau"), ("iterations", "iterations"), ("return", "return_estimate")):
        if getattr(args, dest) is None:
            setattr(args, dest, values[key])


def validate_flags(args: argparse.Namespace) -> None:
    """Checks the flags that do not depend on the noise level (see :func:`validate_solver_flags` for the rest)."""
    if args.input is None and args.clean is None:
        raise UsageError("give --input (a degraded image) or --clean (an image to degrade); or no argument for the demo")
    check_accelerator(args)
    if args.noise_std == "auto":
        if args.input is None:
            raise UsageError("--noise-std auto estimates the noise of --input; to degrade --clean, give the noise "
                             "to add as a number (0-255 scale)")
    elif not math.isfinite(args.noise_std) or args.noise_std <= 0:
        raise UsageError(f"--noise-std must be > 0 on the 0-255 scale, got {args.noise_std}")
    if args.operator == "sr" and args.scale < 1:
        raise UsageError(f"--scale must be an integer >= 1, got {args.scale}")
    if args.boundary == "auto":  # a file given as the observation is a real one: its scene goes on past the frame
        args.boundary = "valid" if args.operator in ("blur", "sr") and args.input is not None else "circular"
    elif args.boundary == "valid" and args.operator not in ("blur", "sr"):
        raise UsageError(f"--boundary valid is for --operator blur or sr; drop it for --operator {args.operator}")


def validate_solver_flags(args: argparse.Namespace) -> None:
    """Fills the solver's flags from the preset at the (now known) noise level and checks them."""
    apply_preset(args)  # its setting depends on the (now valid) noise level
    if not args.gamma > 0:
        raise UsageError(f"--gamma must be > 0 on the 0-255 scale, got {args.gamma}")
    if args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    if not (args.divergence_guard == 0 or args.divergence_guard > 1):
        raise UsageError(f"--divergence-guard must be > 1 (or 0 to turn it off), got {args.divergence_guard}")


ESTIMATE_WHOLE_PIXELS = 4 * 2**20  # --noise-std auto reads an image of up to this many pixels whole; a larger one
ESTIMATE_BOX = 512  # pools the patches of a 3 x 3 grid of boxes of this side, spread over it


def estimate_input_noise(args: argparse.Namespace) -> float:
    """``--noise-std auto``: the noise std (0-255 scale) of --input, from the patches of the whole image, or of
    a 3 x 3 grid of 512 x 512 boxes spread over an image larger than 4 megapixels (read box by box); with
    ``--operator inpaint``, of its observed pixels (--mask)."""
    from .large_io import open_image
    from .tiling import Box, cut
    source = open_image(args.input, args.max_pixels)
    _, h, w = source.shape
    if h * w <= ESTIMATE_WHOLE_PIXELS:
        boxes = [Box(0, h, 0, w)]
    else:
        side_h, side_w = min(h, ESTIMATE_BOX), min(w, ESTIMATE_BOX)
        boxes = [Box(r, r + side_h, c, c + side_w) for r in (0, (h - side_h) // 2, h - side_h)
                 for c in (0, (w - side_w) // 2, w - side_w)]
    if args.operator == "demosaic":  # boxes on even rows and columns: the Bayer pattern's phase of the whole image
        boxes = [Box(b.r0 - b.r0 % 2, b.r1 - b.r0 % 2, b.c0 - b.c0 % 2, b.c1 - b.c0 % 2) for b in boxes]
        return noise_255(torch.cat([bayer_planes(source.read(b), args.bayer) for b in boxes]))
    mask = None
    if args.operator == "inpaint":
        mask = read_mask(args.mask, (h, w))
        mask = torch.stack([cut(mask.reshape(-1, h, w).amin(0, keepdim=True), b) for b in boxes])  # [B, 1, h, w]
    crops = torch.stack([source.read(b) for b in boxes])  # [B, C, h, w]
    return noise_255(crops, mask)


def bayer_planes(image: Tensor, pattern: str) -> Tensor:
    """A Bayer observation [1 or 3, H, W] (a grey raw mosaic, or colour with the unobserved channels at 0) as its
    four 2x2 phases [4, 1, H // 2, W // 2], each of one colour: what ``--noise-std auto`` reads for demosaicing."""
    h, w = image.shape[-2:]
    mosaic = image[0] if image.shape[0] == 1 else (image * bayer_mask(h, w, pattern)).sum(0)
    rows, cols = h - h % 2, w - w % 2
    return torch.stack([mosaic[i:rows:2, j:cols:2] for i in (0, 1) for j in (0, 1)])[:, None]


def noise_255(images: Tensor, mask: Tensor | None = None, source: str | None = None) -> float:
    """``--noise-std auto``'s estimate (0-255 scale) from the patches of ``images`` [B, C, H, W] pooled (crops of
    one image; with ``mask`` [B, 1, H, W], its observed pixels only); one-line refusals naming ``source`` (a file
    of a folder; default --input) when it cannot be made or finds no noise."""
    try:
        sigma = float(estimate_noise_std(images, mask=mask, pooled=True)[0])
    except NoiseEstimateError as err:
        raise UsageError(f"--noise-std auto{'' if source is None else f', {source}'}: {err}") from None
    if not sigma * 255 > 0:
        raise UsageError(f"--noise-std auto found no noise in {source or '--input'} (a noiseless or synthetic "
                         "image?); give the noise level as a number")
    return sigma * 255


def native_bf16_cpu() -> bool:
    """Whether this CPU has native bf16 kernels (AVX512-BF16 or AMX), where bf16 is faster than fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fast_settings(device_type: str, compiled: bool) -> dict:
    """The JPMAPConfig fields ``--fast`` sets on a device of this type (see :func:`_apply_fast`), with or without
    ``--compile``."""
    return {"precision": "bf16", "channels_last": True, "fuse_nets": True, "cuda_graph": not compiled,
            "pointwise_matmul": device_type == "cuda" and not compiled}


def _apply_fast(args: argparse.Namespace) -> None:
    """``--fast``: bf16 + channels_last + fused nets, and unless ``--compile`` is given (the two exclude each
    other) the eager pass replayed from a CUDA graph; on CUDA's eager path the 1x1 convolutions as matrix products
    too (H200: 23.3 -> 19.9 ms per iteration at 320x448, 125.8 -> 101.7 ms at 1024x1024; not measured compiled,
    and not faster on a CPU). ``--cuda-graph`` does nothing on a CPU."""
    if args.method != "jpmap":
        return  # refused below with the other JPMAP options
    device = pick_device(args.device)
    if device.type == "cpu" and not native_bf16_cpu():
        raise UsageError("--fast runs bf16, which this CPU has no native kernels for (slower than fp32 here); "
                         "drop --fast, or add --fuse-nets alone")
    fast = fast_settings(device.type, args.compile is not None)
    fast["pointwise_matmul"] = args.pointwise_matmul or fast["pointwise_matmul"]  # --pointwise-matmul stays asked for
    vars(args).update(fast)


def solver_config(args: argparse.Namespace):
    """The JPMAPConfig (``--method jpmap``) or AdamConfig of parsed restore.py arguments, gamma given on 0-255."""
    try:
        tau, tau_end = parse_tau(args.tau)
    except PresetError as err:
        raise UsageError(f"--{err}") from None
    gamma = args.gamma / 255.0
    if args.fast:
        _apply_fast(args)
    if args.method == "jpmap":
        if args.cuda_graph and args.compile:
            raise UsageError("--cuda-graph replays the eager pass; with --compile use --compile reduce-overhead "
                             "for CUDA graphs instead")
        if args.pointwise_matmul and not args.channels_last:
            raise UsageError("--pointwise-matmul works on channels_last inputs: add --channels-last (or --fast)")
        return JPMAPConfig(gamma=gamma, tau=tau, tau_end=tau_end, max_iters=args.iterations, tol=args.tol,
                           divergence_guard=args.divergence_guard or None,
                           return_estimate=args.return_estimate, precision=args.precision,
                           channels_last=args.channels_last, fuse_nets=args.fuse_nets, cuda_graph=args.cuda_graph,
                           pointwise_matmul=args.pointwise_matmul,
                           compile=args.compile is not None, compile_mode=args.compile or "default")
    used = [f for f, on in (("--fast", args.fast), ("--channels-last", args.channels_last),
                            ("--fuse-nets", args.fuse_nets), ("--cuda-graph", args.cuda_graph),
                            ("--pointwise-matmul", args.pointwise_matmul),
                            ("--compile", args.compile)) if on]
    if used:
        raise UsageError(f"{', '.join(used)}: JPMAP options; drop them with --method adam")
    return AdamConfig(gamma=gamma, tau=tau, tau_end=tau_end, lr=args.lr, max_iters=args.iterations,
                      return_estimate=args.return_estimate, precision=args.precision)


def _write_metrics(out: Path, metrics: dict) -> None:
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2, default=str).encode())


def _settings(args: argparse.Namespace, cfg) -> dict:
    return {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "solver": asdict(cfg)}


def run_tiled_input(args: argparse.Namespace, cfg, source) -> dict:
    """A large observation file (``source``, a :class:`restore.large_io.ImageSource`) restored tile by tile, read
    box by box (never whole in memory)."""
    from .large_io import grey_if_equal
    from .predict import is_rank_zero, restore_tiled
    if args.method != "jpmap":
        raise UsageError("tiled restoration runs JPMAP only; drop --method adam or --tile")
    bit_depth, (_, h, w) = source.bit_depth, source.shape
    if args.operator != "demosaic":  # a grey image stored in colour is restored (and written) grey, as a small one
        source = grey_if_equal(source)
    hw = solution_hw(args, (h, w))
    operator = make_operator(args, hw, sigma_from_255(args.noise_std), have_observation=True)
    suffix = ".png" if hw[0] * hw[1] <= 64 * 2**20 else ".tif"
    start = time.perf_counter()
    out_path = restore_tiled(source, operator, args.prior, cfg, args.out / f"restored{suffix}",
                             bit_depth=bit_depth, **tiled_kwargs(args, operator))
    metrics = {"output": str(out_path), "tiled": True, "iterations": cfg.max_iters,
               "seconds": time.perf_counter() - start, **_settings(args, cfg)}
    if is_rank_zero():
        _write_metrics(args.out, metrics)
    return metrics


def run(args: argparse.Namespace) -> dict:
    """Validates everything, restores, then writes OUT/restored.png, degraded.png, metrics.json (a folder:
    :func:`restore.folder.run_folder`)."""
    if any(p is not None and p.is_dir() for p in (args.input, args.clean)):
        from .folder import run_folder  # imports Lightning: only for folders
        return run_folder(args)
    validate_flags(args)
    args.noise_estimated = args.noise_std == "auto"
    if args.noise_estimated:
        args.noise_std = estimate_input_noise(args)
        print(f"noise std estimated from --input: {args.noise_std:.2f} (0-255 scale)", file=sys.stderr)
    validate_solver_flags(args)
    cfg = solver_config(args)
    device = pick_device(args.device)
    sigma = sigma_from_255(args.noise_std)
    prior = load_prior(args.prior, map_location=device)
    if args.input is not None and args.clean is None and args.operator != "demosaic":  # a mosaic is read whole
        from .large_io import open_image
        source = open_image(args.input, args.max_pixels)
        c, h, w = source.shape
        if use_tiles(args, *solution_hw(args, (h, w))):
            return run_tiled_input(args, cfg, source)
    clean = info = y = None
    if args.clean is not None:
        clean, info = read_image_with_info(args.clean, max_pixels=args.max_pixels)
    if args.input is not None:
        y, in_info = read_image_with_info(args.input, max_pixels=args.max_pixels)
        y, info = as_observation(args, y), info or in_info
    if clean is not None:
        check_colour_clean(args, clean)
    channels = (y if y is not None else clean).shape[0]  # a grey observation stored in colour is grey
    if clean is not None and y is None:
        clean = clean_for_scale(args, clean)
    hw = tuple(clean.shape[-2:]) if clean is not None else solution_hw(args, tuple(y.shape[-2:]))
    operator = make_operator(args, hw, sigma, have_observation=y is not None)
    if y is None:  # synthetic degradation, in float64 on the CPU, seeded
        y, reference = degrade_clean(operator, clean, torch.Generator().manual_seed(args.seed))
    else:
        reference = None if clean is None else reference_for(args, operator, y, clean)
    bit_depth = 16 if info is not None and info.bit_depth == 16 else 8
    tiled = use_tiles(args, *hw)
    start = time.perf_counter()
    if tiled:
        from .predict import is_rank_zero, restore_tiled
        if args.method != "jpmap":
            raise UsageError("tiled restoration runs JPMAP only; drop --method adam or --tile")
        out_path = restore_tiled(y, operator.cpu(), args.prior, cfg, args.out / "restored.png", bit_depth=bit_depth,
                                 **tiled_kwargs(args, operator))
        if not is_rank_zero():
            return {}
        estimate = read_image_with_info(out_path)[0]
        result = None
    else:
        if isinstance(operator, Inpainting) and prior.image_channels == 1 and channels > 1:  # channel by channel
            operator = Inpainting(masks_per_channel(operator.mask, channels), sigma)
        operator = operator.to(device)
        y_batch = to_prior_channels(y[None].to(device, torch.float32), prior.image_channels)
        solve_op = prior_operator(operator, channels, prior.image_channels)
        progress = None if args.no_progress else _progress(args.iterations)
        if args.method == "jpmap":
            result = jpmap(y_batch, solve_op, prior, cfg, callback=progress)
        else:
            result = adam_joint(y_batch, solve_op, prior, cfg)
        estimate = from_prior_channels(operator.frame(result.estimate), channels)[0].cpu()
        if not bool(torch.isfinite(estimate).all()):
            raise RuntimeError("the solver produced non-finite values; lower --gamma or raise --tau")
    seconds = time.perf_counter() - start
    metrics = {"iterations": result.iterations if result else cfg.max_iters,
               "converged": result.converged if result else None, "seconds": seconds, "tiled": tiled,
               "diverged": result.diverged > 0 if result else None,
               "final_residual": result.history.residual[-1] if result and result.history.residual else None,
               "sigma": sigma, "device": str(device), **_settings(args, cfg)}
    if reference is not None:
        metrics.update(metrics_of(estimate[None], reference[None]))
        if y.shape[-2:] == reference.shape[-2:]:
            metrics["degraded"] = metrics_of(y[None], reference[None])
        if not tiled:
            wiener = tikhonov(to_prior_channels(y[None].to(device), prior.image_channels), operator, grad_std=0.1)
            metrics["tikhonov"] = metrics_of(from_prior_channels(operator.frame(wiener.estimate), channels).cpu(),
                                             reference[None])
    args.out.mkdir(parents=True, exist_ok=True)
    write_image(args.out / "degraded.png", y.clamp(0, 1), bit_depth=bit_depth)
    if not tiled:
        write_image(args.out / "restored.png", estimate.clamp(0, 1), bit_depth=bit_depth)
    if args.tensorboard and result is not None:
        _tensorboard(args.out / "tb", result, estimate)
    _write_metrics(args.out, metrics)
    return metrics


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with lightning
        return None
    bar = tqdm(total=total, desc="restoring", unit="it", leave=False, file=sys.stderr)

    def update(k: int, x: Tensor) -> None:
        bar.update(1)
        if k >= total:
            bar.close()

    return update


def _tensorboard(logdir: Path, result, estimate: Tensor) -> None:
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(logdir)) as writer:
        h = result.history
        for k, (r, d, c) in enumerate(zip(h.residual, h.data_term, h.coupling_term), start=1):
            writer.add_scalar("residual", r, k)
            writer.add_scalar("data_term", d, k)
            writer.add_scalar("coupling_term", c, k)
            if k > 1 and math.isfinite(h.ratio[k - 1]):
                writer.add_scalar("residual_ratio", h.ratio[k - 1], k)
        writer.add_image("restored", estimate.clamp(0, 1), result.iterations)


def _user_errors() -> tuple[type[Exception], ...]:
    """What restore.py reports as one ``error:`` line: its own refusals, and Lightning's refusal of a Trainer
    setting (devices, strategy) once Lightning is imported."""
    errors = (UsageError, OperatorError, DataError, PriorError, ValueError, RuntimeError)
    lightning_errors = sys.modules.get("lightning.fabric.utilities.exceptions")
    return errors + ((lightning_errors.MisconfigurationException,) if lightning_errors else ())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        from .demo import demo
        return demo()
    args = build_parser().parse_args(argv)
    try:
        metrics = run(args)
    except _user_errors() as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if not metrics:  # a non-zero rank of a multi-process run: rank 0 reports
        return 0
    summary = {k: metrics[k] for k in ("images", "psnr", "ssim", "iterations", "seconds") if k in metrics}
    if args.noise_estimated:  # a folder's images have one each (metrics.csv); the summary gives their mean
        summary["noise_std"] = round(metrics["noise_std"] if "images" in metrics else args.noise_std, 3)
    if args.operator in ("blur", "sr"):  # which model of the image border was used (auto picks it)
        summary["boundary"] = args.boundary
    print(json.dumps(summary))
    print(f"wrote {args.out}/: {metrics.get('output', 'restored.png')}, metrics.json")
    return 0
