"""Tile files and their assembly into the output image with bounded host memory.

Restored tiles live in ``WORK/tiles/img{i}_tile{j}.npy`` (float32 [C, h, w], written atomically), so a run
can be resumed: a tile whose file exists is never recomputed. :func:`assemble` streams the tiles into a
memory-mapped float32 accumulator (``WORK/.accumulator_img{i}.npy``, [H, W, C]) with the stitching weights of
:class:`restore.tiling.TileGrid` (a partition of unity, so no normalisation pass), then writes the output
atomically: ``.npy`` (float32 [H, W, C] in [0, 1]) or TIFF (8/16-bit or float32) copied from the
accumulator in strips of rows, so peak host memory depends on the tile size, not the image; PNG and the other
:mod:`data.images` formats are encoded in memory (ordinary sizes).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from data.images import atomic_path, write_image

from .tiling import TileGrid

STRIP_BYTES = 16 * 2**20  # rows copied per strip when writing large outputs
RELEASE_EVERY = 64 * 2**20  # accumulator bytes touched between two releases of its pages


class TileError(RuntimeError):
    """A tile cannot be used (non-finite values, missing or malformed file); the message names its position."""


def release(a) -> None:
    """Flush a numpy memory map and drop its pages from this process's resident set (the data stays in the
    file and the page cache), so that resident memory does not grow with the part of the file visited."""
    mm = getattr(a, "_mmap", None)
    if mm is None:
        return
    if a.flags.writeable:
        a.flush()
    if hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - platform without madvise on this map
            pass


def tile_path(tiles_dir: str | os.PathLike, image_index: int, tile_index: int) -> Path:
    return Path(tiles_dir) / f"img{image_index}_tile{tile_index}.npy"


def save_tile(path: str | os.PathLike, x: np.ndarray) -> None:
    """np.save to a temporary file next to ``path``, fsync, then rename: a crash never leaves a partial tile."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)


def missing_tiles(tiles_dir: str | os.PathLike, grids: list[TileGrid]) -> list[tuple[int, int]]:
    """(image index, tile index) of every tile without a file, in order."""
    return [(i, t.index) for i, g in enumerate(grids) for t in g.tiles
            if not tile_path(tiles_dir, i, t.index).is_file()]


def _quantise(a: np.ndarray, bit_depth: int) -> np.ndarray:
    """Clip to [0, 1] and quantise like :func:`data.images.write_image` (round half to even, NaN -> 0)."""
    a = np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0), 0, 1)
    if bit_depth == 32:
        return a.astype(np.float32)
    return np.round(a * (2**bit_depth - 1)).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _strips(height: int, row_bytes: int):
    step = max(1, STRIP_BYTES // max(1, row_bytes))
    for r in range(0, height, step):
        yield r, min(height, r + step)


def write_output(acc: np.ndarray, out_path: str | os.PathLike, bit_depth: int = 8) -> Path:
    """Write the [H, W, C] float image ``acc`` (e.g. a memmap) to ``out_path`` atomically; see module doc."""
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    H, W, C = acc.shape
    if suffix == ".npy":
        with atomic_path(out_path) as tmp:
            dst = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(H, W, C))
            for r0, r1 in _strips(H, W * C * 4):
                dst[r0:r1] = _quantise(np.asarray(acc[r0:r1]), 32)
                release(dst), release(acc)
            del dst
        return out_path
    if suffix in (".tif", ".tiff"):
        import tifffile

        if bit_depth not in (8, 16, 32):
            raise ValueError(f"TIFF bit depth must be 8, 16 or 32, got {bit_depth}")
        dtype = {8: np.uint8, 16: np.uint16, 32: np.float32}[bit_depth]
        shape = (H, W, C) if C == 3 else (H, W)
        nbytes = H * W * C * np.dtype(dtype).itemsize
        with atomic_path(out_path) as tmp:
            dst = tifffile.memmap(tmp, shape=shape, dtype=dtype, photometric="rgb" if C == 3 else "minisblack",
                                  bigtiff=nbytes > 2**32 - 2**25)
            for r0, r1 in _strips(H, W * C * 4):
                q = _quantise(np.asarray(acc[r0:r1]), bit_depth)
                dst[r0:r1] = q if C == 3 else q[..., 0]
                release(dst), release(acc)
            del dst
        return out_path
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(acc).transpose(2, 0, 1)))
    write_image(out_path, x, bit_depth=bit_depth)
    return out_path


def assemble(grid: TileGrid, tiles_dir: str | os.PathLike, out_path: str | os.PathLike, channels: int,
             image_index: int = 0, mode: str = "blend", work_dir: str | os.PathLike | None = None,
             bit_depth: int = 8) -> Path:
    """Stitch the tile files of image ``image_index`` into ``out_path`` (see module doc); returns the path.

    Raises :class:`TileError` naming the tile if a file is missing, of the wrong shape, or not finite."""
    tiles_dir = Path(tiles_dir)
    work_dir = Path(work_dir) if work_dir is not None else tiles_dir.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    H, W = grid.out_shape
    h, w = grid.tile_shape[0] * grid.scale, grid.tile_shape[1] * grid.scale
    acc_path = work_dir / f".accumulator_img{image_index}.npy"
    acc = open_memmap(acc_path, mode="w+", dtype=np.float32, shape=(H, W, channels))
    touched = 0
    try:
        for t in grid.tiles:
            where = f"image {image_index}, tile {t.index} (grid row {t.row}, col {t.col}; observation {t.obs_box.describe()})"
            path = tile_path(tiles_dir, image_index, t.index)
            if not path.is_file():
                raise TileError(f"{where}: tile file {path} is missing; rerun the same command to compute it")
            x = np.load(path, allow_pickle=False)
            if x.shape != (channels, h, w):
                raise TileError(f"{where}: tile file {path} has shape {x.shape}, expected {(channels, h, w)}; "
                                "delete it and rerun")
            if not np.isfinite(x).all():
                raise TileError(f"{where}: tile file {path} holds non-finite values; delete it and rerun")
            dst, src, wt = grid.placement(t, mode)
            part = x[:, src.r0:src.r1, src.c0:src.c1] * wt.numpy()[None]
            acc[dst.r0:dst.r1, dst.c0:dst.c1] += part.transpose(1, 2, 0)
            touched += part.nbytes
            if touched > RELEASE_EVERY:
                release(acc)
                touched = 0
        release(acc)
        return write_output(acc, out_path, bit_depth)
    finally:
        del acc
        acc_path.unlink(missing_ok=True)
