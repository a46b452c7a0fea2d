"""Convolution operators diagonal in Fourier (circular) or cropped from it (valid): :class:`Blur` and
:class:`SuperResolution` (blur + decimation, the closed form of Zhao et al. 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cg import CGResult, conjugate_gradient
from .base import Gamma, LinearOperator, OperatorError, _check_image, _rho, _work_dtype
from .kernels import sr_factor, validate_kernel


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
    signed_kernel = False  # negative kernel entries allowed (super-resolution's bicubic kernel)

    def __init__(self, kernel, sigma: float, padding: str = "circular", cg_tol: float = 1e-6,
                 cg_max_iters: int = 200) -> None:
        super().__init__(sigma)
        self.register_buffer("kernel", validate_kernel(kernel, signed=self.signed_kernel))
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

    def prox_l2_valid(self, z: Tensor, y: Tensor, gamma: Gamma, x0: Tensor | None = None) -> CGResult:
        """The valid model's prox with the conjugate gradients' record (iterations, relative residual).

        ``x0``: where the conjugate gradients start (default: the circular prox, see the class docstring); an
        iterative solver whose prox points move little passes its previous solution (TV's Chambolle-Pock)."""
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
        if x0 is None:
            start = self._prox_circ(zd, y_grid + (1 - inside) * self._A_circ(zd), gamma)  # C z outside the window
        elif x0.shape != z.shape:
            raise OperatorError(f"prox start x0 has shape {tuple(x0.shape)}, not z's {tuple(z.shape)}")
        else:
            start = x0.to(dt)
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
    """y = (k (*) x)[::s, ::s] (circular blur, then keep the first pixel of each s x s block). The kernel may have
    negative lobes (bicubic's). With a kernel centred on its array, y[i] is centred on x's pixel s i; with
    :func:`~restore.operators.kernels.sr_kernel`'s, on the centre of the block, s i + (s - 1) / 2, as in a
    low-resolution image made by PIL, imresize or a camera (and :func:`bicubic_upsample`, the start).
    prox (Zhao et al., IEEE TIP 2016): with R = F(A^T y + rho z), Pb = blockmean_s(|K|^2),
    X = (R - conj(K) tile_s(blockmean_s(K R) / (Pb + rho))) / rho, where blockmean_s averages the s x s aliased
    spectral tiles ([s, H/s, s, W/s] view). Implemented as X = Z + conj(K) tile_s(F(y - A z) / (Pb + rho)).
    ``padding="valid"`` (a camera's low-resolution image): only the outputs whose kernel support lies inside the
    scene are observed; x's grid has margins beyond the s-times-larger frame (see :class:`_FourierKernel`)."""

    signed_kernel = True

    def __init__(self, kernel, factor: int, sigma: float, padding: str = "circular", cg_tol: float = 1e-6,
                 cg_max_iters: int = 200) -> None:
        self.factor = sr_factor(factor)
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
        return bicubic_upsample(y, self.factor)

    def lambda_min(self, image_size: tuple | None = None) -> float:
        """0 for factor > 1 (decimation is singular), else as for Blur."""
        return super().lambda_min(image_size) if self.factor == 1 else 0.0


def bicubic_upsample(y: Tensor, factor: int) -> Tensor:
    """y [N, C, h, w] up-sampled ``factor`` times (bicubic, clamped to [0, 1]): super-resolution's start."""
    up = F.interpolate(y.to(_work_dtype(y)), scale_factor=factor, mode="bicubic", align_corners=False)
    return up.clamp(0, 1).to(y.dtype)
