"""Tile grids for patch-wise restoration of large images, per-tile operators, and stitching (pure torch).

Geometry, per axis (rows and columns alike), in *observation* pixels (for super-resolution: low-resolution
pixels, each output tile being ``scale`` times bigger):

* the axis is cut into ``n = ceil(size / tile)`` *cores* with evenly spaced integer boundaries, so every core
  is at most ``tile`` long and no core is a sliver;
* every tile is a *window* of the same length ``min(size, tile + 2 * halo)``: centred on its core, then
  shifted inward where it would leave the image (never shrunk), so all tiles have one shape and can be batched,
  and every interior core boundary has at least ``halo`` pixels of context on both sides;
* stitching gives each output pixel a convex combination of the tiles covering it. ``"blend"`` (default): a
  partition of unity, a linear ramp of half-width ``ramp = min(halo, shortest core // 2)`` centred on every
  interior core boundary (weights of the two tiles there sum to 1; elsewhere a single tile has weight 1).
  ``"crop"``: plain halo cropping, each pixel taken from the tile whose core contains it (``ramp = 0``).
  A 2-D weight is the outer product of the row and column weights, so it also sums to 1 everywhere.

Blending measured against the whole-image estimate (tests/restore/test_tiling.py) is at least as good as
cropping and has no visible seams, hence the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .operators import Inpainting

BLEND_MODES = ("blend", "crop")


class Box(NamedTuple):
    """Rows r0:r1 and columns c0:c1 of an image (half-open)."""

    r0: int
    r1: int
    c0: int
    c1: int

    def scaled(self, s: int) -> "Box":
        return Box(self.r0 * s, self.r1 * s, self.c0 * s, self.c1 * s)

    def describe(self) -> str:
        return f"rows {self.r0}:{self.r1}, cols {self.c0}:{self.c1}"


@dataclass(frozen=True)
class Tile:
    index: int  # row-major position in the grid
    row: int
    col: int
    obs_box: Box  # window in the observation
    out_box: Box  # the same window in the output (scale times the observation box)


@dataclass(frozen=True)
class AxisLayout:
    """One axis of a grid, in observation pixels: window starts, core boundaries and the blend half-width."""

    size: int
    window: int
    starts: tuple[int, ...]
    bounds: tuple[int, ...]  # n + 1 core boundaries, bounds[0] = 0, bounds[-1] = size
    ramp: int


def axis_layout(size: int, tile: int, halo: int) -> AxisLayout:
    """Equal-length windows covering ``[0, size)``: see the module docstring."""
    if size < 1 or tile < 1 or halo < 0:
        raise ValueError(f"need size >= 1, tile >= 1 and halo >= 0, got size={size}, tile={tile}, halo={halo}")
    window = min(size, tile + 2 * halo)
    n = 1 if window >= size else math.ceil(size / tile)
    bounds = tuple(round(k * size / n) for k in range(n + 1))
    starts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = a - (window - (b - a)) // 2
        starts.append(min(max(s, 0), size - window))
    ramp = min(halo, min(b - a for a, b in zip(bounds[:-1], bounds[1:])) // 2) if n > 1 else 0
    return AxisLayout(size, window, tuple(starts), bounds, ramp)


def axis_weight(layout: AxisLayout, i: int, mode: str = "blend", scale: int = 1) -> Tensor:
    """Stitching weight of window ``i`` along one axis, float64 over the window's ``scale * window`` pixels."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    r = layout.ramp * scale if mode == "blend" else 0
    start = layout.starts[i] * scale
    x = torch.arange(start, start + layout.window * scale, dtype=torch.float64) + 0.5  # pixel centres
    w = torch.ones_like(x)
    n = len(layout.starts)

    def rise(p: int) -> Tensor:  # 0 before the boundary p, 1 after; linear over [p - r, p + r)
        return (x >= p).double() if r == 0 else ((x - (p - r)) / (2 * r)).clamp(0, 1)

    if i > 0:
        w = w * rise(layout.bounds[i] * scale)
    if i < n - 1:
        w = w * (1 - rise(layout.bounds[i + 1] * scale))
    return w


class TileGrid:
    """Equal-shaped tiles over an ``height x width`` observation; output tiles are ``scale`` times bigger."""

    def __init__(self, height: int, width: int, tile: int, halo: int, scale: int = 1) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.height, self.width, self.tile, self.halo, self.scale = height, width, tile, halo, scale
        self.rows = axis_layout(height, tile, halo)
        self.cols = axis_layout(width, tile, halo)
        self.tiles: list[Tile] = []
        for i, r0 in enumerate(self.rows.starts):
            for j, c0 in enumerate(self.cols.starts):
                box = Box(r0, r0 + self.rows.window, c0, c0 + self.cols.window)
                self.tiles.append(Tile(len(self.tiles), i, j, box, box.scaled(scale)))

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(rows, cols) of every observation tile."""
        return self.rows.window, self.cols.window

    @property
    def out_shape(self) -> tuple[int, int]:
        return self.height * self.scale, self.width * self.scale

    def core_boundaries(self) -> tuple[list[int], list[int]]:
        """Interior core boundaries (rows, cols) in output pixels: where seams would be."""
        s = self.scale
        return [b * s for b in self.rows.bounds[1:-1]], [b * s for b in self.cols.bounds[1:-1]]

    def weight(self, tile: Tile, mode: str = "blend") -> Tensor:
        """[h_out, w_out] float32 stitching weight of ``tile`` (the weights of all tiles sum to 1)."""
        wr = axis_weight(self.rows, tile.row, mode, self.scale)
        wc = axis_weight(self.cols, tile.col, mode, self.scale)
        return (wr[:, None] * wc[None, :]).float()

    def describe(self) -> dict:
        return {"height": self.height, "width": self.width, "tile": self.tile, "halo": self.halo,
                "scale": self.scale, "tiles": len(self), "tile_shape": list(self.tile_shape)}


def default_halo(operator, prior_multiple: int) -> int:
    """Halo (observation pixels) = max(kernel size, 2 * prior multiple, 16) in output pixels, converted to
    observation pixels for super-resolution, rounded up to a multiple of ``prior_multiple``.

    Why: each tile is solved with the operator's own circular model on the tile, so its x-step wraps the
    tile's opposite edge into a band of half a kernel at its border, and the deconvolution spreads that error
    over a few kernel half-widths; a halo of one full kernel keeps this band (and the tile-edge reflection
    padding seen by the HVAE, whose top latent cell spans ``prior_multiple`` pixels and whose convolutions see
    a few cells around) outside the pixels that get most of the stitching weight. 16 is a floor for
    pointwise operators (denoising, inpainting) where only the prior's receptive field matters.
    """
    kernel = getattr(operator, "kernel", None)
    k = max(kernel.shape) if kernel is not None else 1
    s = int(getattr(operator, "factor", 1))
    need = max(k, 2 * int(prior_multiple), 16)
    halo = math.ceil(need / s)
    m = max(1, int(prior_multiple))
    return m * math.ceil(halo / m)


def cut(y: Tensor, box: Box) -> Tensor:
    """The observation of a tile (with its halo): ``y[..., r0:r1, c0:c1]``."""
    return y[..., box.r0:box.r1, box.c0:box.c1]


def tile_operator(operator, box: Box):
    """The operator restricted to a tile given by its *observation* box.

    Denoising, Blur and SuperResolution are shift-invariant and size-agnostic: the same instance serves every
    tile (its circular model now wraps the tile, which the halo absorbs). Inpainting gets its mask cropped.
    """
    if isinstance(operator, Inpainting):
        return Inpainting(cut(operator.mask, box), operator.sigma)
    if hasattr(operator, "prox_l2"):
        return operator
    raise TypeError(f"cannot tile an operator of type {type(operator).__name__}")


def stitch(tiles: list[Tensor], grid: TileGrid, mode: str = "blend") -> Tensor:
    """Blend restored tiles ([..., h_out, w_out] each, in grid order) into one image (in memory)."""
    if len(tiles) != len(grid):
        raise ValueError(f"got {len(tiles)} tiles for a grid of {len(grid)}")
    lead = tiles[0].shape[:-2]
    out = tiles[0].new_zeros(*lead, *grid.out_shape)
    for t, x in zip(grid.tiles, tiles):
        b = t.out_box
        out[..., b.r0:b.r1, b.c0:b.c1] += x * grid.weight(t, mode).to(x)
    return out


def weight_sum(grid: TileGrid, mode: str = "blend") -> Tensor:
    """Sum of all tiles' weights over the output (all ones for a partition of unity)."""
    return stitch([torch.ones(1, *grid.weight(t, mode).shape) for t in grid.tiles], grid, mode)[0]
