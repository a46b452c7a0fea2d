"""Tile grids for patch-wise restoration of large images, per-tile operators, and stitching (pure torch).

Geometry, per axis (rows and columns alike), in *observation* pixels (for super-resolution: low-resolution
pixels, each output tile being ``scale`` times bigger):

* the axis is cut into ``n = ceil(size / tile)`` *cores* with evenly spaced integer boundaries, so every core
  is at most ``tile`` long and none is a sliver;
* every tile is a *window* of the same length ``min(size, tile + 2 * halo)`` centred on its core, so all tiles
  have one shape and can be batched, and each interior core boundary has at least ``halo`` pixels of context
  on both sides. At the image border the window is either shifted inward (``circular=False``: the halo is
  clipped at the border, used for the pointwise operators Denoising and Inpainting) or continued periodically
  (``circular=True``: used for Blur and SuperResolution, whose whole-image model is a circular convolution,
  so the border tile sees exactly the wrapped-around data the whole-image solver sees);
* stitching gives each output pixel a convex combination of the tiles covering it. ``"blend"`` (default):
  a partition of unity, a linear ramp of half-width ``ramp = min(max(1, halo // 2), shortest core // 2)``
  centred on every interior core boundary, i.e. over the central half of the 2 * halo overlap (the two
  tiles' weights sum to 1 there; elsewhere one tile has weight 1). ``"crop"``: plain halo cropping, each
  pixel taken from the tile whose core contains it (``ramp = 0``). A 2-D weight is the outer product of the
  row and column weights, so it also sums to 1 everywhere.

Measured against the whole-image estimate (tests/restore/test_tiling.py, blur 7x7, denoising, SR x2 with a
random-weight prior): a ramp over the *whole* overlap is slightly worse than cropping (it gives weight to
the pixels next to a window's edge, the ones most affected by the tile's wrap-around and padding: 63.0 vs
65.3 dB for blur, tile 48, halo 16), the half-overlap ramp is as close as cropping (65.3 vs 65.3 dB) and
has no step at the core boundary, hence the default.
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
    """Rows r0:r1 and columns c0:c1 (half-open); may leave the image on a circular grid."""

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


def axis_layout(size: int, tile: int, halo: int, circular: bool = False) -> AxisLayout:
    """Equal-length windows covering ``[0, size)``: see the module docstring."""
    if size < 1 or tile < 1 or halo < 0:
        raise ValueError(f"need size >= 1, tile >= 1 and halo >= 0, got size={size}, tile={tile}, halo={halo}")
    window = min(size, tile + 2 * halo)
    n = 1 if window >= size else math.ceil(size / tile)
    bounds = tuple(round(k * size / n) for k in range(n + 1))
    starts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = a - (window - (b - a)) // 2
        starts.append(s if circular and n > 1 else min(max(s, 0), size - window))
    shortest = min(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    ramp = min(max(1, halo // 2), shortest // 2) if n > 1 and halo > 0 else 0
    return AxisLayout(size, window, tuple(starts), bounds, ramp)


def axis_weight(layout: AxisLayout, i: int, mode: str = "blend", scale: int = 1) -> tuple[int, int, Tensor]:
    """Stitching weight of window ``i`` along one axis: ``(lo, hi, w)``, w (float64) over output pixels
    ``lo:hi``, the part of the image where the weight is non-zero (always inside the window)."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    r = layout.ramp * scale if mode == "blend" else 0
    n, a, b = len(layout.starts), layout.bounds[i] * scale, layout.bounds[i + 1] * scale
    lo, hi = (a - r if i > 0 else 0), (b + r if i < n - 1 else b)
    x = torch.arange(lo, hi, dtype=torch.float64) + 0.5  # pixel centres

    def rise(p: int) -> Tensor:  # 0 before the boundary p, 1 after; linear over [p - r, p + r)
        return (x >= p).double() if r == 0 else ((x - (p - r)) / (2 * r)).clamp(0, 1)

    w = torch.ones_like(x)
    if i > 0:
        w = w * rise(a)
    if i < n - 1:
        w = w * (1 - rise(b))
    return lo, hi, w


class TileGrid:
    """Equal-shaped tiles over an ``height x width`` observation; output tiles are ``scale`` times bigger."""

    def __init__(self, height: int, width: int, tile: int, halo: int, scale: int = 1, circular: bool = False) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.height, self.width, self.tile, self.halo = height, width, tile, halo
        self.scale, self.circular = scale, circular
        self.rows = axis_layout(height, tile, halo, circular)
        self.cols = axis_layout(width, tile, halo, circular)
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

    def placement(self, tile: Tile, mode: str = "blend") -> tuple[Box, Box, Tensor]:
        """Where ``tile`` goes: (box in the output image, the same pixels as a box in the restored tile,
        float32 weight over them). The weights of all tiles sum to 1 at every output pixel."""
        r0, r1, wr = axis_weight(self.rows, tile.row, mode, self.scale)
        c0, c1, wc = axis_weight(self.cols, tile.col, mode, self.scale)
        dst = Box(r0, r1, c0, c1)
        src = Box(r0 - tile.out_box.r0, r1 - tile.out_box.r0, c0 - tile.out_box.c0, c1 - tile.out_box.c0)
        return dst, src, (wr[:, None] * wc[None, :]).float()

    def describe(self) -> dict:
        return {"height": self.height, "width": self.width, "tile": self.tile, "halo": self.halo,
                "scale": self.scale, "circular": self.circular, "tiles": len(self),
                "tile_shape": list(self.tile_shape)}


def is_circular(operator) -> bool:
    """True for the convolution operators (Blur, SuperResolution), whose whole-image model is periodic."""
    return getattr(operator, "kernel", None) is not None


def default_halo(operator, prior_multiple: int) -> int:
    """Halo (observation pixels) = max(kernel size, 2 * prior multiple, 16) in output pixels, converted to
    observation pixels for super-resolution, rounded up to a multiple of ``prior_multiple``.

    Why: each tile is solved with the operator's own circular model on the tile, so its x-step wraps the
    tile's opposite edge into a band of half a kernel at its border (the tile's observation there is not the
    blur of the tile's own content), and the deconvolution spreads that error over a few kernel half-widths;
    a halo of one full kernel keeps this band (and the reflection padding the HVAE sees at the tile edge: its
    top latent cells span ``prior_multiple`` pixels and its convolutions reach a few cells around) outside the
    pixels that get most of the stitching weight. 16 is a floor for the pointwise operators (denoising,
    inpainting), where only the prior's receptive field matters.
    """
    kernel = getattr(operator, "kernel", None)
    k = max(kernel.shape) if kernel is not None else 1
    s = int(getattr(operator, "factor", 1))
    halo = math.ceil(max(k, 2 * int(prior_multiple), 16) / s)
    m = max(1, int(prior_multiple))
    return m * math.ceil(halo / m)


def wrap_segments(a: int, b: int, n: int) -> list[tuple[int, int]]:
    """The indices ``a:b`` taken modulo ``n``, as contiguous pieces ``[(lo, hi), ...]`` of ``0:n``, in order."""
    if b - a > n:
        raise ValueError(f"a window of {b - a} pixels cannot wrap around an axis of {n}")
    pieces, i = [], a
    while i < b:
        lo = i % n
        hi = min(n, lo + (b - i))
        pieces.append((lo, hi))
        i += hi - lo
    return pieces


def cut(y: Tensor, box: Box) -> Tensor:
    """The observation of a tile (with its halo), ``y[..., r0:r1, c0:c1]`` taken periodically if the box
    leaves the image (circular grids)."""
    H, W = y.shape[-2:]
    if 0 <= box.r0 and box.r1 <= H and 0 <= box.c0 and box.c1 <= W:
        return y[..., box.r0:box.r1, box.c0:box.c1]
    rows = torch.cat([y[..., lo:hi, :] for lo, hi in wrap_segments(box.r0, box.r1, H)], dim=-2)
    return torch.cat([rows[..., lo:hi] for lo, hi in wrap_segments(box.c0, box.c1, W)], dim=-1)


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
    """Blend restored tiles ([..., h_out, w_out] each, in grid order) into one image, in memory."""
    if len(tiles) != len(grid):
        raise ValueError(f"got {len(tiles)} tiles for a grid of {len(grid)}")
    out = tiles[0].new_zeros(*tiles[0].shape[:-2], *grid.out_shape)
    for t, x in zip(grid.tiles, tiles):
        dst, src, w = grid.placement(t, mode)
        out[..., dst.r0:dst.r1, dst.c0:dst.c1] += x[..., src.r0:src.r1, src.c0:src.c1] * w.to(x)
    return out


def weight_sum(grid: TileGrid, mode: str = "blend") -> Tensor:
    """Sum of all tiles' weights over the output (all ones for a partition of unity)."""
    h, w = grid.tile_shape
    ones = [torch.ones(1, h * grid.scale, w * grid.scale, dtype=torch.float64) for _ in grid.tiles]
    return stitch(ones, grid, mode)[0]
