"""Command-line flags of tiled (large-image, multi-process) restoration, for ``restore.py``.

``add_tiling_arguments(parser)`` adds the flags, ``use_tiles(args, height, width)`` decides whether an
image is restored whole or tile by tile, and ``tiled_kwargs(args, operator)`` turns the flags into the
keyword arguments of :func:`restore.predict.restore_tiled`.
"""

from __future__ import annotations

import argparse

WHOLE_IMAGE_MAX_PIXELS = 1024 * 1024  # without --tile, images up to this many output pixels run in one piece
DEFAULT_TILE = 512  # output pixels per tile side when tiling is chosen automatically


def _devices(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices takes a number or 'auto', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--devices must be >= 1, got {n}")
    return n


def _positive(name: str, minimum: int = 1):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        return v

    return parse


def add_tiling_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``tiling`` flag group to ``parser`` and return it."""
    g = parser.add_argument_group("tiling (large images, several processes)")
    g.add_argument("--tile", type=_positive("--tile"), default=None,
                   help="restore tile by tile, cores of this many observation pixels per side (low-resolution "
                        f"pixels for --operator sr); default: whole image up to {WHOLE_IMAGE_MAX_PIXELS} output "
                        f"pixels, else tiles of {DEFAULT_TILE} output pixels")
    g.add_argument("--halo", type=_positive("--halo", 0), default=None,
                   help="context margin around each tile in observation pixels (default: the largest of the "
                        "kernel size, the x-step's reach for this kernel, noise and --gamma, and twice the prior's "
                        "down-sampling factor; at least 16)")
    g.add_argument("--tiles-per-batch", type=_positive("--tiles-per-batch"), default=4,
                   help="tiles restored together in one JPMAP batch (raise on a large GPU)")
    g.add_argument("--devices", type=_devices, default=1, help="processes (GPUs or CPU processes) per node, or auto")
    g.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"],
                   help="Lightning accelerator for the tiles")
    g.add_argument("--strategy", default="auto",
                   help="Lightning strategy: auto, ddp (default for several devices), ddp_spawn, ...")
    g.add_argument("--num-nodes", type=_positive("--num-nodes"), default=1, help="machines (with a launcher)")
    g.add_argument("--blend", choices=["blend", "crop"], default="blend",
                   help="stitching: linear partition-of-unity ramps (default) or plain halo cropping")
    g.add_argument("--keep-tiles", action="store_true", help="keep OUT/tiles after a successful run")
    return g


def check_accelerator(args: argparse.Namespace) -> None:
    """Refuses ``--accelerator gpu`` (or ``cuda``, ``mps``) where there is none, before anything is written
    (Lightning would raise only when its Trainer is made)."""
    import torch

    name = getattr(args, "accelerator", "auto")
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"--accelerator {name} asked for but no GPU is visible; use --accelerator cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--accelerator mps asked for but this machine has no MPS device; use --accelerator cpu")


def use_tiles(args: argparse.Namespace, height: int, width: int) -> bool:
    """True when the restored image (``height`` x ``width`` output pixels) goes tile by tile: ``--tile``
    given, several processes asked for, or more than :data:`WHOLE_IMAGE_MAX_PIXELS` pixels."""
    several = getattr(args, "devices", 1) not in (1, "1") or getattr(args, "num_nodes", 1) > 1
    return getattr(args, "tile", None) is not None or several or height * width > WHOLE_IMAGE_MAX_PIXELS


def tiled_kwargs(args: argparse.Namespace, operator) -> dict:
    """Keyword arguments of :func:`restore.predict.restore_tiled` from the parsed flags."""
    scale = int(getattr(operator, "factor", 1))
    tile = args.tile if args.tile is not None else max(16, DEFAULT_TILE // scale)
    return {"tile": tile, "halo": args.halo, "tiles_per_batch": args.tiles_per_batch, "devices": args.devices,
            "accelerator": args.accelerator, "strategy": args.strategy, "num_nodes": args.num_nodes,
            "blend": args.blend, "keep_tiles": args.keep_tiles,
            "progress": not getattr(args, "no_progress", False), "max_pixels": getattr(args, "max_pixels", None)}
