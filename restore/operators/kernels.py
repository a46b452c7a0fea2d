"""Blur kernels: checked (finite, non-negative or for super-resolution signed, sum 1), read from files, Gaussian,
motion and the anti-aliasing kernels of super-resolution (:func:`sr_kernel`)."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import OperatorError, _read_array


def validate_kernel(k, signed: bool = False) -> Tensor:
    """Check a 2-D blur kernel (finite, non-negative, positive sum) and return it normalised to sum 1 (float64).
    ``signed``: negative entries allowed (a super-resolution kernel with negative lobes, such as bicubic's)."""
    k = torch.as_tensor(k).detach().to("cpu", torch.float64)
    if k.ndim != 2:
        raise OperatorError(f"blur kernel must be 2-D [kh, kw], got shape {tuple(k.shape)}; give one kernel for all channels")
    if k.numel() == 0 or not torch.isfinite(k).all():
        raise OperatorError("blur kernel is empty or contains NaN/inf; give a finite non-negative kernel")
    kmax = float(k.max())
    if kmax <= 0 or float(k.sum()) <= 0:
        raise OperatorError(f"blur kernel must have a positive sum, got sum {float(k.sum()):.4g}; give a non-negative kernel")
    if signed:
        return k / k.sum()
    if float(k.min()) < -1e-6 * kmax:
        raise OperatorError(f"blur kernel has negative entries (min {float(k.min()):.4g}); give a non-negative kernel")
    k = k.clamp_min(0)
    return k / k.sum()


def load_kernel(path: str | Path, signed: bool = False) -> Tensor:
    """Load a 2-D blur kernel from a .npy array or an image file (converted to grey); returned normalised to sum 1
    (``signed``: see :func:`validate_kernel`)."""
    arr = _read_array(path, "kernel")
    if arr.ndim != 2:
        raise OperatorError(f"kernel file {str(path)!r} holds an array of shape {arr.shape}; it must be 2-D")
    try:
        return validate_kernel(torch.from_numpy(arr), signed)
    except OperatorError as e:
        raise OperatorError(f"kernel file {str(path)!r}: {e}") from None


def gaussian_kernel(sigma_px: float, size: int | None = None) -> Tensor:
    """Isotropic Gaussian kernel of std ``sigma_px`` pixels, size default 2*ceil(3 sigma)+1, sum 1."""
    if not math.isfinite(sigma_px) or sigma_px <= 0:
        raise OperatorError(f"Gaussian kernel std must be > 0 pixels, got {sigma_px!r}")
    size = 2 * math.ceil(3 * sigma_px) + 1 if size is None else int(size)
    if size < 1:
        raise OperatorError(f"kernel size must be >= 1, got {size}")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma_px**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


SR_KERNELS = ("bicubic", "gaussian", "box")


def sr_factor(factor) -> int:
    """A super-resolution factor checked (an integer >= 1; a numpy integer too, not a bool) and as an int."""
    if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
        raise OperatorError(f"super-resolution factor must be an integer >= 1, got {factor!r}")
    return int(factor)


def _keys_cubic(t: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution weight (support |t| < 2; a = -0.5: PIL's and MATLAB's bicubic)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def sr_kernel(factor: int, kind: str = "bicubic", std: float | None = None) -> Tensor:
    """The anti-aliasing kernel of a factor-``s`` down-sampling whose low-resolution pixel i sits at the centre of
    its s x s block, high-resolution coordinate s i + (s - 1) / 2: how PIL, MATLAB's imresize, OpenCV's
    INTER_AREA and torch's antialiased interpolate down-sample, how a camera's pixel integrates its area, and
    what :func:`bicubic_upsample` (align_corners=False) inverts.

    :class:`SuperResolution` keeps the first pixel of each block after a convolution with a kernel centred at
    (kh // 2, kw // 2), so y[i] = sum_u x[u] k[s i - u + c] (c = L // 2); a weight w(t) at distance t from the
    block centre therefore sits at k[j] = w(j - c + (s - 1) / 2), on the smallest odd L x L array that holds
    the shifted support (for s > 1 the entries at one end are zero). Separable, sum 1. ``kind``:
    - ``bicubic``: Keys' cubic (a = -0.5) stretched by s, support 2 s, negative lobes: PIL's BICUBIC and
      MATLAB's imresize, the usual benchmark degradation;
    - ``gaussian``: std ``std`` pixels (default 0.5 s), truncated at 3 std (at least the block's half width);
    - ``box``: the mean of the s x s block (area averaging; a camera's fill factor 1)."""
    s = sr_factor(factor)
    if kind not in SR_KERNELS:
        raise OperatorError(f"unknown super-resolution kernel {kind!r}; choose one of {', '.join(SR_KERNELS)}")
    if kind == "gaussian":
        std = 0.5 * s if std is None else float(std)
        if not math.isfinite(std) or std <= 0:
            raise OperatorError(f"Gaussian kernel std must be > 0 pixels, got {std!r}")
    elif std is not None:
        raise OperatorError(f"std is for the gaussian kernel, not {kind!r}")
    reach = {"bicubic": 2.0 * s, "gaussian": max(3.0 * (std or 0.0), s / 2), "box": s / 2}[kind]  # >= the block
    size = 2 * math.ceil(reach + (s - 1) / 2) + 1
    t = torch.arange(size, dtype=torch.float64) - size // 2 + (s - 1) / 2  # distance to the block centre
    if kind == "bicubic":
        w = _keys_cubic(t / s)
    elif kind == "gaussian":
        w = torch.exp(-(t**2) / (2 * std**2)) * (t.abs() <= reach)
    else:
        w = (t.abs() < s / 2).to(torch.float64)
    nonzero = w.nonzero().flatten()
    trim = min(int(nonzero[0]), size - 1 - int(nonzero[-1]))  # zeros at both ends, as many each side (centre kept)
    w = w[trim:size - trim]
    k = w[:, None] * w[None, :]
    return k / k.sum()


def _gaussian_blur_zero(x: Tensor, std: float) -> Tensor:
    """[N, C, H, W] blurred by a separable Gaussian of ``std`` px (3 std radius), zero outside the image."""
    g = gaussian_kernel(std).sum(0).to(x)  # the 2D kernel's marginal: the normalised 1D Gaussian
    radius, c = g.numel() // 2, x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def _splat(points: Tensor, size: int) -> Tensor:
    """Accumulate points (n, 2) = (row, col) into a size x size grid with bilinear weights."""
    k = torch.zeros(size * size, dtype=torch.float64)
    base = points.floor()
    frac = points - base
    for dr in (0, 1):
        for dc in (0, 1):
            r, c = base[:, 0].long() + dr, base[:, 1].long() + dc
            w = (frac[:, 0] if dr else 1 - frac[:, 0]) * (frac[:, 1] if dc else 1 - frac[:, 1])
            ok = (r >= 0) & (r < size) & (c >= 0) & (c < size)
            k.index_add_(0, (r * size + c)[ok], w[ok])
    return k.reshape(size, size)


def motion_kernel(size: int = 25, length: float = 15, angle_deg: float = 0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Motion-blur kernel (sum 1): a straight line of ``length`` px at ``angle_deg``, or, with a ``generator``,
    a random smooth trajectory of that length (random walk of the heading around ``angle_deg``)."""
    if int(size) < 1 or not math.isfinite(length) or length < 0:
        raise OperatorError(f"motion kernel needs size >= 1 and length >= 0, got size={size}, length={length}")
    size, n = int(size), max(int(8 * length), 2)
    theta = torch.full((n,), math.radians(angle_deg), dtype=torch.float64)
    if generator is not None:
        turn = torch.randn(n, generator=generator, dtype=torch.float64) * 0.1
        theta = theta + turn.cumsum(0)
    step = length / (n - 1)
    d = torch.stack([-torch.sin(theta), torch.cos(theta)], 1) * step
    pos = torch.cat([torch.zeros(1, 2, dtype=torch.float64), d[:-1].cumsum(0)])
    pos = pos - (pos.amax(0) + pos.amin(0)) / 2
    extent = float((pos.amax(0) - pos.amin(0)).max())
    if extent > size - 1 > 0:
        pos = pos * ((size - 1) / extent)
    k = _splat(pos + (size - 1) / 2, size)
    return k / k.sum()
