"""Inpainting: y = M . x, its masks (random, boxes, from files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Gamma, LinearOperator, OperatorError, _check_image, _read_array, _rho, _work_dtype
from .kernels import _gaussian_blur_zero


def _validate_mask(mask) -> Tensor:
    m = torch.as_tensor(mask).detach().to("cpu", torch.float64)
    if not 2 <= m.ndim <= 4:
        raise OperatorError(f"mask must have shape [H,W], [C,H,W] or [N,C,H,W], got {tuple(m.shape)}")
    if not torch.isfinite(m).all() or float(m.min()) < 0 or float(m.max()) > 1:
        raise OperatorError("mask values must be finite and in [0, 1] (1 = observed, 0 = missing); fix the mask")
    return m.reshape((1,) * (4 - m.ndim) + tuple(m.shape))


class Inpainting(LinearOperator):
    """y = M . x (M: 1 observed, 0 missing, or weights in [0,1]).  prox per pixel:
    x = (M y/sigma^2 + z/gamma^2) / (M^2/sigma^2 + 1/gamma^2) = (M y + rho z) / (M^2 + rho)."""

    def __init__(self, mask, sigma: float) -> None:
        super().__init__(sigma)
        self.register_buffer("mask", _validate_mask(mask))

    def _m(self, x: Tensor) -> Tensor:
        _check_image(x)
        m = self.mask
        if any(a not in (1, b) for a, b in zip(m.shape[:2], x.shape[:2])) or tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
            raise OperatorError(f"mask of shape {tuple(m.shape)} does not match the image of shape {tuple(x.shape)}; "
                                "give a mask of the image's height and width")
        return m.to(device=x.device, dtype=x.dtype)

    def A(self, x: Tensor) -> Tensor:
        return self._m(x) * x

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._m(y) * y

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        self._check_pair(z, y, z.shape[-2:])
        m = self._m(z)
        rho = _rho(self.sigma, gamma, z)
        return (m * y + rho * z) / (m * m + rho)

    def init(self, y: Tensor, fill: Tensor | None = None, max_iters: int = 500, tol: float = 1e-4) -> Tensor:
        """The harmonic interpolation of the observed pixels: y at the observed ones (mask > 0.5, divided by the
        mask), and at the missing ones the minimiser of the Dirichlet energy sum over neighbouring pixel pairs of
        (x_i - x_j)^2 (4-neighbours, none across the image border), i.e. the discrete Laplace equation
        Lap(x) = 0 on the missing pixels with the observed ones fixed.

        Conjugate gradient per image (``max_iters``, stopped once the residual is ``tol`` of its start), from the
        normalised convolution of :meth:`fill_local`, which it only improves: holes of n pixels across take about
        n iterations. An image with no observed pixel keeps ``fill``."""
        x = self.fill_local(y, fill)
        dt = _work_dtype(y)
        free = (self._m(y) <= 0.5).expand_as(y).to(dt)
        x = x.to(dt)
        dims = tuple(range(1, y.ndim))

        def laplacian(v: Tensor) -> Tensor:  # sum of (neighbour - v) over the in-image 4-neighbours
            p = F.pad(v, (1, 1, 1, 1), mode="replicate")
            return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * v

        r = free * laplacian(x)  # minus the energy's gradient over the missing pixels
        d, rr = r.clone(), (r * r).sum(dims, keepdim=True)
        stop = tol**2 * rr
        for _ in range(max_iters):
            if bool((rr <= stop).all()):
                break
            ad = -free * laplacian(d)  # the energy's Hessian on the missing pixels (SPD there), times d
            alpha = rr / (d * ad).sum(dims, keepdim=True).clamp_min(1e-30)
            x = x + alpha * d
            r = r - alpha * ad
            rr_new = (r * r).sum(dims, keepdim=True)
            d = r + rr_new / rr.clamp_min(1e-30) * d
            rr = rr_new
        return x.to(y.dtype)

    def fill_local(self, y: Tensor, fill: Tensor | None = None) -> Tensor:
        """y at the observed pixels (mask > 0.5, divided by the mask); each missing pixel the Gaussian-weighted
        mean of the observed ones around it (normalised convolution) at the finest std of 1, 2, 4, 8, 16 px
        whose observed share of the weight inside the image is at least 0.2; a pixel with no observed one
        within reach of the coarsest takes ``fill`` (broadcast to y, e.g. [1, C, 1, 1]: a tile takes its
        whole image's value), default the per-image, per-channel mean of the observed pixels."""
        m = self._m(y).expand_as(y)
        obs = m > 0.5
        w = obs.to(y.dtype)
        if fill is None:
            fill = (y * w).sum((-2, -1), keepdim=True) / w.sum((-2, -1), keepdim=True).clamp_min(1)
        observed = torch.where(obs, y / m.clamp_min(0.5), torch.zeros_like(y))
        estimate = fill.to(y).expand_as(y)
        inside = torch.ones_like(w[:1, :1])
        for std in (16.0, 8.0, 4.0, 2.0, 1.0):  # coarse to fine: a finer scale overrides where it has support
            num, den = _gaussian_blur_zero(observed, std), _gaussian_blur_zero(w, std)
            support = den / _gaussian_blur_zero(inside, std)  # observed share of the kernel's mass in the image
            estimate = torch.where(support > (0.2 if std < 16 else 1e-6), num / den.clamp_min(1e-12), estimate)
        return torch.where(obs, observed, estimate)

    def lambda_min(self) -> float:
        return float(self.mask.min()) ** 2


def random_mask(height: int, width: int, rate_missing: float, generator: torch.Generator | None = None,
                channels: int = 1) -> Tensor:
    """[channels, H, W] mask with each pixel missing (0) with probability rate_missing."""
    if not 0 <= rate_missing < 1:
        raise OperatorError(f"missing-pixel rate must be in [0, 1), got {rate_missing!r}")
    return (torch.rand(channels, height, width, generator=generator) >= rate_missing).float()


def box_mask(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> Tensor:
    """[1, H, W] mask of ones with each box (top, left, h, w) set to 0 (missing)."""
    m = torch.ones(1, height, width)
    for box in boxes:
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or not (0 <= box[0] < height and 0 <= box[1] < width):
            raise OperatorError(f"box {tuple(box)} must be (top, left, h, w) with h, w > 0 inside a {height}x{width} image")
        t, l, h, w = (int(v) for v in box)
        m[:, t:t + h, l:l + w] = 0
    return m


def masks_per_channel(mask: Tensor, channels: int) -> Tensor:
    """Inpainting masks [N, 1 or C, H, W] of colour images restored channel by channel through a grey prior (the
    images as [N * C, 1, H, W]): [N * C, 1, H, W], each channel's item with its mask."""
    n, hw = mask.shape[0], mask.shape[-2:]
    return mask.expand(n, channels, *hw).reshape(n * channels, 1, *hw)


BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def bayer_mask(height: int, width: int, pattern: str = "RGGB") -> Tensor:
    """[3, H, W] colour filter array: each pixel observes one channel (R, G or B), by the 2x2 ``pattern`` read
    row by row from the top-left pixel (RGGB: red at (0, 0), green at (0, 1) and (1, 0), blue at (1, 1)).
    Demosaicing is inpainting with this per-channel mask, so its x-step is the same closed form."""
    pattern = str(pattern).upper()
    if pattern not in BAYER_PATTERNS:
        raise OperatorError(f"Bayer pattern {pattern!r} is not one of {', '.join(BAYER_PATTERNS)}")
    m = torch.zeros(3, height, width)
    for k, colour in enumerate(pattern):
        m["RGB".index(colour), k // 2::2, k % 2::2] = 1
    return m


def random_box_mask(height: int, width: int, generator: torch.Generator | None = None, count: int = 3,
                    frac: float = 0.2) -> Tensor:
    """[1, H, W] mask with ``count`` missing squares of side round(frac * min(H, W)) at random positions."""
    side = max(1, round(frac * min(height, width)))
    boxes = []
    for _ in range(count):
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        boxes.append((top, left, side, side))
    return box_mask(height, width, boxes)


def load_mask(path: str | Path) -> Tensor:
    """Load a mask: image file (grey pixels > 0.5 observed) or .npy array of values in [0, 1]."""
    arr = _read_array(path, "mask")
    if not Path(path).suffix.lower() == ".npy":
        arr = (arr > 0.5).astype(np.float64)
    try:
        m = _validate_mask(torch.from_numpy(arr))
    except OperatorError as e:
        raise OperatorError(f"mask file {str(path)!r}: {e}") from None
    return m.reshape(m.shape[-3:]).float() if m.shape[0] == 1 else m.float()
