"""Linear degradation operators y = A x + n, n ~ N(0, sigma^2 I), for PnP-HVAE restoration.

Images are NCHW float tensors in [0, 1]. Each operator is a stateless ``nn.Module`` (deepinv naming):
``A(x)``, ``A_adjoint(y)`` and ``prox_l2(z, y, gamma)``, the exact minimiser of
``||A x - y||^2 / (2 sigma^2) + ||x - z||^2 / (2 gamma^2)``. Below, ``rho = sigma^2 / gamma^2``.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cg import CGResult, conjugate_gradient

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


def validate_kernel(k) -> Tensor:
    """Check a 2-D blur kernel (finite, non-negative, positive sum) and return it normalised to sum 1 (float64)."""
    k = torch.as_tensor(k).detach().to("cpu", torch.float64)
    if k.ndim != 2:
        raise OperatorError(f"blur kernel must be 2-D [kh, kw], got shape {tuple(k.shape)}; give one kernel for all channels")
    if k.numel() == 0 or not torch.isfinite(k).all():
        raise OperatorError("blur kernel is empty or contains NaN/inf; give a finite non-negative kernel")
    kmax = float(k.max())
    if kmax <= 0 or float(k.sum()) <= 0:
        raise OperatorError(f"blur kernel must have a positive sum, got sum {float(k.sum()):.4g}; give a non-negative kernel")
    if float(k.min()) < -1e-6 * kmax:
        raise OperatorError(f"blur kernel has negative entries (min {float(k.min()):.4g}); give a non-negative kernel")
    k = k.clamp_min(0)
    return k / k.sum()


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


def load_kernel(path: str | Path) -> Tensor:
    """Load a 2-D blur kernel from a .npy array or an image file (converted to grey); returned normalised to sum 1."""
    arr = _read_array(path, "kernel")
    if arr.ndim != 2:
        raise OperatorError(f"kernel file {str(path)!r} holds an array of shape {arr.shape}; it must be 2-D")
    try:
        return validate_kernel(torch.from_numpy(arr))
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


class _FourierKernel(LinearOperator):
    """A convolution with a centred kernel (then, for super-resolution, decimation), on a circular grid or, with
    ``padding="valid"``, as a camera sees it: the observation holds only the outputs whose kernel support lies
    inside the scene (deepinv's ``padding="valid"``), so nothing is assumed of the scene beyond the frame.

    Valid: x lives on a grid with ``margins`` ((top, bottom), (left, right)) around the part y's pixels show
    (its ``frame``: ``factor`` times y's size), just wide enough for every observed output's kernel support
    and multiples of ``factor``. With C the circular operator on x's grid (exact on the observed outputs, whose
    supports do not wrap) and S the crop of its output to y's window, A = S C and
    prox_l2(z, y, gamma) = argmin ||S C x - y||^2 / (2 sigma^2) + ||x - z||^2 / (2 gamma^2), i.e.
    (C^T S^T S C + rho) x = C^T S^T y + rho z, solved by conjugate gradients (:mod:`restore.cg`) to a relative
    residual of ``cg_tol``, preconditioned by (C^T C + rho)^-1 (the circular prox, closed form) and started
    from the circular prox with C z in place of the observation outside y's window."""

    PADDINGS = ("circular", "valid")
    factor = 1

    def __init__(self, kernel, sigma: float, padding: str = "circular", cg_tol: float = 1e-6,
                 cg_max_iters: int = 200) -> None:
        super().__init__(sigma)
        self.register_buffer("kernel", validate_kernel(kernel))
        self._cache: dict[tuple, Tensor] = {}  # kernel spectra by (size, device, dtype, kind, kernel version)
        if padding not in self.PADDINGS:
            raise OperatorError(f"padding must be one of {self.PADDINGS}, got {padding!r}")
        if not cg_tol > 0 or cg_max_iters < 1:
            raise OperatorError(f"need cg_tol > 0 and cg_max_iters >= 1, got {cg_tol!r} and {cg_max_iters!r}")
        self.padding, self.cg_tol, self.cg_max_iters = padding, float(cg_tol), int(cg_max_iters)

    def _otf(self, hw: tuple, like: Tensor, real: bool) -> Tensor:
        """Fourier transform of the kernel zero-padded to hw with its centre rolled to pixel (0, 0)."""
        kh, kw = self.kernel.shape
        H, W = int(hw[0]), int(hw[1])
        if kh > H or kw > W:
            raise OperatorError(f"blur kernel {kh}x{kw} is larger than the image {H}x{W}; use a smaller kernel or a larger image")
        dt = _work_dtype(like)
        key = (H, W, like.device, dt, real, self.kernel._version, self.kernel.data_ptr())
        if key in self._cache:
            return self._cache[key]
        pad = torch.zeros(H, W, dtype=dt, device=like.device)
        pad[:kh, :kw] = self.kernel.to(device=like.device, dtype=dt)
        pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
        K = torch.fft.rfft2(pad) if real else torch.fft.fft2(pad)
        if len(self._cache) >= 8:
            self._cache.clear()
        self._cache[key] = K
        return K

    def _conv(self, x: Tensor, adjoint: bool = False) -> Tensor:
        K = self._otf(x.shape[-2:], x, real=True)
        X = torch.fft.rfft2(x.to(K.real.dtype))
        return torch.fft.irfft2(X * (K.conj() if adjoint else K), s=x.shape[-2:]).to(x.dtype)

    # the circular model, on the grid it is given (subclasses)
    def _A_circ(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _At_circ(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _prox_circ(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        raise NotImplementedError

    def _init_circ(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def circular(self) -> "_FourierKernel":
        """The same operator with circular boundaries."""
        raise NotImplementedError

    # the valid model's geometry
    @property
    def valid(self) -> bool:
        return self.padding == "valid"

    @property
    def margins(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)): x's grid beyond y's frame (0 when circular). An output at frame pixel
        p reads x from p - (k - 1 - k // 2) to p + k // 2; the first observed output sits at the frame's first
        pixel and the last at ``factor`` pixels before its end; both margins are rounded up to multiples of
        ``factor`` (for a blur: k - 1 - k // 2 and k // 2)."""
        if not self.valid:
            return (0, 0), (0, 0)
        f = self.factor

        def axis(k: int) -> tuple[int, int]:
            before, after = k - 1 - k // 2, max(0, k // 2 + 1 - f)
            return -(-before // f) * f, -(-after // f) * f

        return axis(int(self.kernel.shape[0])), axis(int(self.kernel.shape[1]))

    @property
    def frame_offset(self) -> tuple[int, int]:
        """(rows, cols) from x's first pixel to the frame's."""
        (t, _), (l, _) = self.margins
        return t, l

    def x_shape(self, y_shape: tuple) -> tuple:
        (t, b), (l, r) = self.margins
        f = self.factor
        return (*y_shape[:-2], y_shape[-2] * f + t + b, y_shape[-1] * f + l + r)

    def frame(self, x: Tensor) -> Tensor:
        """x cropped to the pixels that y's show (all of x when circular)."""
        if not self.valid:
            return x
        (t, b), (l, r) = self.margins
        return x[..., t:x.shape[-2] - b, l:x.shape[-1] - r]

    def _embed(self, y: Tensor) -> Tensor:
        """y zero-padded to the circular model's output grid on x's grid."""
        (t, b), (l, r) = self.margins
        f = self.factor
        return F.pad(y, (l // f, r // f, t // f, b // f))

    def _window(self, out: Tensor) -> Tensor:
        """The circular model's output on x's grid cropped to y's window."""
        (t, b), (l, r) = self.margins
        f = self.factor
        return out[..., t // f:out.shape[-2] - b // f, l // f:out.shape[-1] - r // f]

    def _check_x(self, x: Tensor) -> None:
        (t, b), (l, r) = self.margins
        f = self.factor
        H, W = x.shape[-2:]
        if self.valid and (H - t - b < f or W - l - r < f or (H - t - b) % f or (W - l - r) % f):
            raise OperatorError(f"image {H}x{W} does not fit the valid model: it needs {t + b} + a positive multiple "
                                f"of {f} rows and {l + r} + a positive multiple of {f} columns; crop or pad it")

    # the operator
    def A(self, x: Tensor) -> Tensor:
        _check_image(x)
        self._check_x(x)
        return self._window(self._A_circ(x)) if self.valid else self._A_circ(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        _check_image(y, "observation y")
        return self._At_circ(self._embed(y) if self.valid else y)

    def init(self, y: Tensor) -> Tensor:
        """The circular start on y's frame, continued by reflection (replication if too small) to x's grid."""
        x = self._init_circ(y)
        if not self.valid:
            return x
        (t, b), (l, r) = self.margins
        mode = "reflect" if max(t, b) < x.shape[-2] and max(l, r) < x.shape[-1] else "replicate"
        return F.pad(x.to(_work_dtype(x)), (l, r, t, b), mode=mode).to(y.dtype)

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        if self.valid:
            return self.prox_l2_valid(z, y, gamma).solution.to(z.dtype)
        _check_image(z, "prox point z")
        return self._prox_circ(z, y, gamma)

    def prox_l2_valid(self, z: Tensor, y: Tensor, gamma: Gamma) -> CGResult:
        """The valid model's prox with the conjugate gradients' record (iterations, relative residual)."""
        if not self.valid:
            raise OperatorError("prox_l2_valid needs padding='valid'")
        _check_image(z, "prox point z")
        self._check_x(z)
        (t, b), (l, r) = self.margins
        f = self.factor
        self._check_pair(z, y, ((z.shape[-2] - t - b) // f, (z.shape[-1] - l - r) // f))
        dt = _work_dtype(z)
        zd, yd = z.to(dt), y.to(dt)
        rho = _rho(self.sigma, gamma, zd)
        inside = self._embed(torch.ones_like(yd[:1, :1]))  # 1 on y's window of the output grid, 0 outside
        y_grid = self._embed(yd)
        start = self._prox_circ(zd, y_grid + (1 - inside) * self._A_circ(zd), gamma)  # C z outside the window
        zero = torch.zeros_like(y_grid)

        def normal(v: Tensor) -> Tensor:  # (C^T S^T S C + rho) v
            return self._At_circ(inside * self._A_circ(v)) + rho * v

        def precondition(v: Tensor) -> Tensor:  # (C^T C + rho)^-1 v = the circular prox of v / rho with y = 0
            return self._prox_circ(v / rho, zero, gamma)

        rhs = self._At_circ(y_grid) + rho * zd
        return conjugate_gradient(normal, rhs, start, precondition, self.cg_tol, self.cg_max_iters)

    def lambda_min(self, image_size: tuple | None = None) -> float:
        """min |K|^2 on the image_size frequency grid (default: a fine grid approximating all sizes); 0 when
        valid (x has more pixels than y)."""
        if self.valid:
            return 0.0
        if image_size is None:  # approximate the continuous spectrum on a fine grid
            n = max(256, 4 * max(self.kernel.shape))
            image_size = (n, n)
        K = self._otf(image_size, self.kernel, real=True)
        return float((K.abs() ** 2).min().clamp_min(0))


class Blur(_FourierKernel):
    """Convolution y = k (*) x (same 2-D kernel on every channel, centre at (kh//2, kw//2)).

    ``padding="circular"`` (default; the published protocol's synthetic degradation): x and y have one size and
    the convolution wraps around the border. prox: X = (conj(K) Y + rho Z) / (|K|^2 + rho) in Fourier.
    ``padding="valid"`` (a photograph: the scene goes on past the frame): y is the part of the linear
    convolution that the scene holds whole, x is ``kh - 1`` rows and ``kw - 1`` columns larger than y, and
    the prox is solved by conjugate gradients (see :class:`_FourierKernel`)."""

    def circular(self) -> "Blur":
        return Blur(self.kernel, self.sigma)

    def _A_circ(self, x: Tensor) -> Tensor:
        return self._conv(x)

    def _At_circ(self, y: Tensor) -> Tensor:
        return self._conv(y, adjoint=True)

    def _init_circ(self, y: Tensor) -> Tensor:
        _check_image(y, "observation y")
        return y.clone()

    def _prox_circ(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        self._check_pair(z, y, z.shape[-2:])
        K = self._otf(z.shape[-2:], z, real=True)
        dt = K.real.dtype
        rho = _rho(self.sigma, gamma, z.to(dt))
        num = K.conj() * torch.fft.rfft2(y.to(dt)) + rho * torch.fft.rfft2(z.to(dt))
        return torch.fft.irfft2(num / (K.abs() ** 2 + rho), s=z.shape[-2:]).to(z.dtype)


class SuperResolution(_FourierKernel):
    """y = (k (*) x)[::s, ::s] (circular blur, then keep the first pixel of each s x s block).
    prox (Zhao et al., IEEE TIP 2016): with R = F(A^T y + rho z), Pb = blockmean_s(|K|^2),
    X = (R - conj(K) tile_s(blockmean_s(K R) / (Pb + rho))) / rho, where blockmean_s averages the s x s aliased
    spectral tiles ([s, H/s, s, W/s] view). Implemented as X = Z + conj(K) tile_s(F(y - A z) / (Pb + rho)).
    ``padding="valid"`` (a camera's low-resolution image): only the outputs whose kernel support lies inside the
    scene are observed; x's grid has margins beyond the s-times-larger frame (see :class:`_FourierKernel`)."""

    def __init__(self, kernel, factor: int, sigma: float, padding: str = "circular", cg_tol: float = 1e-6,
                 cg_max_iters: int = 200) -> None:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
            raise OperatorError(f"super-resolution factor must be an integer >= 1, got {factor!r}")
        self.factor = int(factor)
        super().__init__(kernel, sigma, padding, cg_tol, cg_max_iters)

    def circular(self) -> "SuperResolution":
        return SuperResolution(self.kernel, self.factor, self.sigma)

    def _check_hw(self, H: int, W: int) -> None:
        s = self.factor
        if H % s or W % s:
            raise OperatorError(f"image size {H}x{W} is not divisible by the super-resolution factor {s}; crop or pad the image")

    def _A_circ(self, x: Tensor) -> Tensor:
        self._check_hw(*x.shape[-2:])
        return self._conv(x)[..., :: self.factor, :: self.factor]

    def _upsample_zero(self, y: Tensor) -> Tensor:
        s = self.factor
        up = y.new_zeros(*y.shape[:-2], y.shape[-2] * s, y.shape[-1] * s)
        up[..., ::s, ::s] = y
        return up

    def _At_circ(self, y: Tensor) -> Tensor:
        return self._conv(self._upsample_zero(y), adjoint=True)

    def _prox_circ(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        s = self.factor
        H, W = z.shape[-2:]
        self._check_hw(H, W)
        self._check_pair(z, y, (H // s, W // s))
        K = self._otf((H, W), z, real=False)
        dt = K.real.dtype
        rho = _rho(self.sigma, gamma, z.to(dt))
        Z = torch.fft.fft2(z.to(dt))
        # blockmean(K R) = Pb * F(y) + rho * F(A z) since F(zero-upsampled y) = tile(F(y)); substituting into
        # X = (R - conj(K) tile(blockmean(K R) / (Pb + rho))) / rho gives the same X without dividing by rho:
        resid = torch.fft.fft2(y.to(dt)) - (K * Z).reshape(*Z.shape[:-2], s, H // s, s, W // s).mean(dim=(-4, -2))
        Pb = (K.abs() ** 2).reshape(s, H // s, s, W // s).mean(dim=(0, 2))
        inv_w = resid / (Pb + rho)
        X = Z + K.conj() * inv_w.repeat(*([1] * (inv_w.ndim - 2)), s, s)
        return torch.fft.ifft2(X).real.to(z.dtype)

    def _init_circ(self, y: Tensor) -> Tensor:
        _check_image(y, "observation y")
        up = F.interpolate(y.to(_work_dtype(y)), scale_factor=self.factor, mode="bicubic", align_corners=False)
        return up.clamp(0, 1).to(y.dtype)

    def lambda_min(self, image_size: tuple | None = None) -> float:
        """0 for factor > 1 (decimation is singular), else as for Blur."""
        return super().lambda_min(image_size) if self.factor == 1 else 0.0


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


OPERATORS: dict[str, type[LinearOperator]] = {
    "denoise": Denoising,
    "blur": Blur,
    "sr": SuperResolution,
    "inpaint": Inpainting,
}
