"""The operators' base: y = A x + n, n ~ N(0, sigma^2 I); :class:`LinearOperator`, :class:`Denoising`, the
shared checks and the one-line :class:`OperatorError`."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

Gamma = float | Tensor


class OperatorError(ValueError):
    """Bad operator configuration or input; the message is one line saying what is wrong and how to fix it."""


def sigma_from_255(s: float) -> float:
    """Convert a noise std given on the 0-255 scale to the [0, 1] scale."""
    if not isinstance(s, numbers.Real) or not math.isfinite(s) or s <= 0:
        raise OperatorError(f"noise std must be > 0 on the 0-255 scale, got {s!r}")
    return float(s) / 255.0


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_image(x: Tensor, what: str = "image") -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise OperatorError(f"expected the {what} as an NCHW tensor, got {got}; add batch/channel dimensions")


def _rho(sigma: float, gamma: Gamma, like: Tensor) -> Gamma:
    """rho = sigma^2 / gamma^2, as a float or a tensor broadcastable per batch item."""
    if isinstance(gamma, Tensor):
        g = gamma.to(device=like.device, dtype=like.dtype)
        g = g.reshape(-1, 1, 1, 1) if g.ndim == 1 else g
        return sigma**2 / g**2
    if not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma <= 0:
        raise OperatorError(f"prox step gamma must be a finite number > 0, got {gamma!r}")
    return sigma**2 / float(gamma) ** 2


def _read_array(path: str | Path, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise OperatorError(f"{what} file {str(p)!r} does not exist; check the path")
    try:
        if p.suffix.lower() == ".npy":
            return np.asarray(np.load(p, allow_pickle=False), dtype=np.float64)
        from PIL import Image

        with Image.open(p) as img:
            img.load()
            scale = 65535.0 if img.mode.startswith("I;16") else 1.0
            if img.mode not in ("1", "I", "F") and scale == 1.0:
                img, scale = img.convert("L"), 255.0  # colour/palette/8-bit images -> grey in [0, 1]
            return np.asarray(img, dtype=np.float64) / scale
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported the same way
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OperatorError(f"cannot read {what} file {str(p)!r} ({msg}); give a .npy array or a png/jpg/tif image") from e


class LinearOperator(nn.Module):
    """Base class: y = A x + N(0, sigma^2). Subclasses define A, A_adjoint, prox_l2."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma <= 0:
            raise OperatorError(f"noise std sigma must be a finite number > 0 on the [0,1] scale, got {sigma!r}")
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def noise(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Add N(0, sigma^2) noise (no clipping)."""
        return x + self.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    def degrade(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.noise(self.A(x), generator)

    def init(self, y: Tensor) -> Tensor:
        return y.clone()

    def x_shape(self, y_shape: tuple) -> tuple:
        return tuple(y_shape)

    def frame(self, x: Tensor) -> Tensor:
        """The part of x that a restored image shows: all of it, except for a valid blur (y's frame)."""
        return x

    def lambda_min(self) -> float:
        return 1.0

    @staticmethod
    def _check_pair(z: Tensor, y: Tensor, y_hw: tuple) -> None:
        _check_image(z, "prox point z")
        _check_image(y, "observation y")
        if tuple(y.shape[-2:]) != tuple(y_hw):
            raise OperatorError(f"observation of size {tuple(y.shape[-2:])} does not match the expected {tuple(y_hw)}; "
                                "pass the observation made with this operator")


class Denoising(LinearOperator):
    """A = I.  prox: x = (y/sigma^2 + z/gamma^2) / (1/sigma^2 + 1/gamma^2) = (y + rho z) / (1 + rho)."""

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        self._check_pair(z, y, z.shape[-2:])
        rho = _rho(self.sigma, gamma, z)
        return (y + rho * z) / (1 + rho)
