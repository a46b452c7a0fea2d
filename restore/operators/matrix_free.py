"""Any linear operator from its two functions: :class:`MatrixFree`, and :func:`from_deepinv` for deepinv's physics.

For the operators this package has no class for (demosaicing, compressed sensing, a space-varying blur, a blur
followed by missing pixels, a tomography projector ...): give ``A`` and ``A_adjoint`` and the solvers
(:func:`restore.jpmap.jpmap`, :func:`restore.baselines.adam_joint`, ``tikhonov``, ``total_variation``) run as
with the built-in operators. The x-step has no closed form in general:

    prox_l2(z, y, gamma) = argmin_x ||A x - y||^2 / (2 sigma^2) + ||x - z||^2 / (2 gamma^2)
                         = the solution of (A^T A + rho I) x = A^T y + rho z,   rho = sigma^2 / gamma^2,

solved by conjugate gradients (:mod:`restore.cg`) from z to a relative residual of ``cg_tol`` (the matrix's
eigenvalues lie in [rho, ||A||^2 + rho], so a few tens of steps at the usual rho of 0.1-1 and ||A|| <= 1).
Where the operator has a closed form, pass it as ``exact_prox(z, y, rho)``; :func:`from_deepinv` does so for
deepinv's decomposable physics (inpainting, demosaicing, BlurFFT, ...).

A wrong adjoint makes conjugate gradients (and every solver) wrong without a sign, so ``A_adjoint`` is checked
against ``A`` once per input shape, device and dtype: |<A u, v> - <u, A^T v>| <= ``adjoint_tol`` ||A u|| ||v||
for seeded random u, v, else an :class:`OperatorError` says so. Tiled and folder restoration need an operator
they can cut into windows: there, use the built-in ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import math

import torch
from torch import Tensor

from ..cg import CGResult, conjugate_gradient
from .base import Gamma, LinearOperator, OperatorError, _check_image, _rho, _work_dtype
from .fourier import bicubic_upsample
from .inpainting import Inpainting as _Inpainting

INITS = ("auto", "observation", "adjoint", "least_squares")


class MatrixFree(LinearOperator):
    """y = A x + n, n ~ N(0, sigma^2 I), for a linear ``A`` given as functions (module docstring).

    ``A``: [N, C, H, W] -> y of any shape with N first; ``A_adjoint``: y -> [N, C, H, W].
    ``init``: the solvers' start. "observation": y itself (A keeps the image's shape); "adjoint": A^T y;
    "least_squares": argmin ||A x - y||^2 + damping ||x - 1/2||^2 (data-consistent, mid-grey where A sees
    nothing; ``init_damping``, by conjugate gradients); "auto": "observation" when A^T y has y's shape, else
    "least_squares"; or a function y -> x.
    ``wraps``: whether the x grid wraps around (circular operators): the Tikhonov and TV baselines' gradient then
    wraps too. ``exact_prox(z, y, rho)``: a closed form of the x-step, used instead of conjugate gradients.
    """

    def __init__(self, A: Callable[[Tensor], Tensor], A_adjoint: Callable[[Tensor], Tensor], sigma: float, *,
                 init: str | Callable[[Tensor], Tensor] = "auto", wraps: bool = False,
                 exact_prox: Callable[[Tensor, Tensor, Gamma], Tensor] | None = None, cg_tol: float = 1e-6,
                 cg_max_iters: int = 500, init_damping: float = 1e-3, adjoint_tol: float = 1e-4) -> None:
        super().__init__(sigma)
        if not callable(A) or not callable(A_adjoint):
            raise OperatorError("A and A_adjoint must be functions of a tensor (x -> y and y -> x)")
        if not callable(init) and init not in INITS:
            raise OperatorError(f"init must be one of {INITS} or a function y -> x, got {init!r}")
        if not cg_tol > 0 or cg_max_iters < 1 or not init_damping > 0 or not adjoint_tol > 0:
            raise OperatorError(f"need cg_tol > 0, cg_max_iters >= 1, init_damping > 0 and adjoint_tol > 0, got "
                                f"{cg_tol!r}, {cg_max_iters!r}, {init_damping!r} and {adjoint_tol!r}")
        if exact_prox is not None and not callable(exact_prox):
            raise OperatorError("exact_prox must be a function (z, y, rho) -> x, or None")
        self._A, self._At, self.exact_prox = A, A_adjoint, exact_prox
        self.init_rule, self.wraps = init, bool(wraps)
        self.cg_tol, self.cg_max_iters = float(cg_tol), int(cg_max_iters)
        self.init_damping, self.adjoint_tol = float(init_damping), float(adjoint_tol)
        self._checked: set[tuple] = set()  # (shape, device, dtype) of inputs whose adjoint was checked

    def A(self, x: Tensor) -> Tensor:
        _check_image(x)
        self.check_adjoint(x)
        return self._A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._At(y)

    def check_adjoint(self, x: Tensor) -> None:
        """Checks <A u, v> = <u, A^T v> for random u shaped like ``x`` (once per shape, device and dtype)."""
        key = (tuple(x.shape), x.device, x.dtype)
        if key in self._checked:
            return
        gen = torch.Generator().manual_seed(0)
        dt = _work_dtype(x)
        u = torch.randn(x.shape, generator=gen, dtype=dt).to(x.device)
        Au = self._A(u)
        if not isinstance(Au, Tensor) or Au.shape[:1] != u.shape[:1]:
            raise OperatorError(f"A must map an image batch of shape {tuple(u.shape)} to a tensor with its batch "
                                f"size {u.shape[0]} first, got {_shape(Au)}")
        v = torch.randn(Au.shape, generator=gen, dtype=Au.dtype).to(x.device)
        Atv = self._At(v)
        if not isinstance(Atv, Tensor) or Atv.shape != u.shape:
            raise OperatorError(f"A_adjoint must map y of shape {tuple(v.shape)} back to the image shape "
                                f"{tuple(u.shape)}, got {_shape(Atv)}")
        lhs, rhs = float((Au * v).sum()), float((u * Atv.to(u.dtype)).sum())
        scale = float(Au.norm() * v.norm())
        if not abs(lhs - rhs) <= self.adjoint_tol * max(scale, torch.finfo(dt).tiny):
            raise OperatorError(f"A_adjoint is not the adjoint of A on images of shape {tuple(u.shape)}: <A u, v> = "
                                f"{lhs:.6g} but <u, A_adjoint v> = {rhs:.6g} for random u, v; fix A_adjoint")
        self._checked.add(key)

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Gamma) -> Tensor:
        if self.exact_prox is not None:
            _check_image(z, "prox point z")
            self.check_adjoint(z)
            return self.exact_prox(z, y, _rho(self.sigma, gamma, z)).to(z.dtype)
        return self.prox_l2_cg(z, y, gamma).solution.to(z.dtype)

    def prox_l2_cg(self, z: Tensor, y: Tensor, gamma: Gamma, x0: Tensor | None = None,
                   tol: float | None = None) -> CGResult:
        """The x-step by conjugate gradients, with their record (iterations, relative residual); ``x0``: where
        they start (default z; an iterative solver whose prox points move little passes its previous x); ``tol``:
        their relative residual (default ``cg_tol``)."""
        _check_image(z, "prox point z")
        self.check_adjoint(z)
        if x0 is not None and x0.shape != z.shape:
            raise OperatorError(f"prox start x0 has shape {tuple(x0.shape)}, not z's {tuple(z.shape)}")
        dt = _work_dtype(z)
        zd, yd = z.to(dt), y.to(dt)
        rho = _rho(self.sigma, gamma, zd)
        return conjugate_gradient(lambda v: self._At(self._A(v)) + rho * v, self._At(yd) + rho * zd,
                                  zd if x0 is None else x0.to(dt), tol=self.cg_tol if tol is None else tol,
                                  max_iters=self.cg_max_iters)

    def init(self, y: Tensor) -> Tensor:
        rule = self.init_rule
        if callable(rule):
            return rule(y)
        if rule == "observation":
            return y.clone()
        back = self._At(y)
        if rule == "adjoint":
            return back
        if rule == "auto" and back.shape == y.shape:
            return y.clone()
        # argmin ||A x - y||^2 + damping ||x - 1/2||^2: the x-step at z = 1/2 with rho = damping
        grey = torch.full_like(back, 0.5)
        return self.prox_l2_cg(grey, y, self.sigma / math.sqrt(self.init_damping), tol=1e-4).solution.to(back.dtype)

    def x_shape(self, y_shape: tuple) -> tuple:
        raise OperatorError("a MatrixFree operator does not know its image's shape from y's; pass x0 or use "
                            "the built-in operators for tiled or folder restoration")


def _shape(v) -> str:
    return str(tuple(v.shape)) if isinstance(v, Tensor) else type(v).__name__


def _deepinv_sigma(physics) -> float:
    noise = getattr(physics, "noise_model", None)
    name = type(noise).__name__
    if name != "GaussianNoise":
        raise OperatorError(f"the physics' noise model is {name}, not GaussianNoise; pass sigma=, the Gaussian noise "
                            "std on the [0, 1] scale that the solvers should assume")
    s = torch.as_tensor(noise.sigma).detach().flatten()
    if s.numel() != 1 and not bool((s == s[0]).all()):
        raise OperatorError(f"the physics' GaussianNoise has a different sigma per image ({s.tolist()}); pass one "
                            "sigma= on the [0, 1] scale")
    return float(s[0])


def from_deepinv(physics, sigma: float | None = None, prox: str = "auto", **kwargs) -> MatrixFree:
    """A deepinv ``LinearPhysics`` as a :class:`MatrixFree` operator (deepinv and this package share the NCHW,
    [0, 1] convention). ``sigma``: the noise std on the [0, 1] scale (default: the physics' GaussianNoise).

    ``prox``: "physics" uses the physics' own ``prox_l2`` (deepinv's argmin ``g/2 ||A x - y||^2 + 1/2 ||x - z||^2``,
    called with ``g = 1/rho`` = gamma^2 / sigma^2), "cg" this package's conjugate gradients, "auto" the physics'
    where it is exact by construction (decomposable physics, diagonal in a known basis: denoising, inpainting,
    demosaicing, BlurFFT, ...) and conjugate gradients elsewhere: deepinv's own solver stops at its default
    tolerance, and its circular down-sampling's closed form (Zhao et al. 2016) disagreed with its ``A`` by up
    to 0.12 on a 12x16 image with the "gaussian" filter (deepinv 0.5.0; exact to round-off at 32x32). ``kwargs`` go to :class:`MatrixFree` (``init``, ``cg_tol``, ...). The start, unless
    ``init`` is given: inpainting and demosaicing the harmonic interpolation of the observed pixels (as
    :class:`~restore.operators.Inpainting`), down-sampling the bicubic up-sampling of y, else MatrixFree's."""
    if not (callable(getattr(physics, "A", None)) and callable(getattr(physics, "A_adjoint", None))):
        raise OperatorError(f"{type(physics).__name__} has no A and A_adjoint; pass a deepinv LinearPhysics")
    if prox not in ("auto", "physics", "cg"):
        raise OperatorError(f"prox must be auto, physics or cg, got {prox!r}")
    sigma = _deepinv_sigma(physics) if sigma is None else sigma
    names = {c.__name__ for c in type(physics).__mro__}
    padding = getattr(physics, "padding", None)
    use_physics = prox == "physics" or (prox == "auto" and "DecomposablePhysics" in names)
    if use_physics and not callable(getattr(physics, "prox_l2", None)):
        raise OperatorError(f"{type(physics).__name__} has no prox_l2; use prox='cg'")

    def exact(z: Tensor, y: Tensor, rho: Gamma) -> Tensor:
        return physics.prox_l2(z, y, 1 / rho)

    kwargs.setdefault("wraps", "BlurFFT" in names or padding == "circular")
    mask = getattr(physics, "mask", None)
    if "init" not in kwargs and "Inpainting" in names and isinstance(mask, Tensor):
        kwargs["init"] = _Inpainting(mask.detach().cpu().clamp(0, 1), sigma).init  # harmonic interpolation
    elif "init" not in kwargs and "Downsampling" in names and "Upsampling" not in names:
        kwargs["init"] = functools.partial(bicubic_upsample, factor=int(physics.factor))
    op = MatrixFree(physics.A, physics.A_adjoint, sigma, exact_prox=exact if use_physics else None, **kwargs)
    if isinstance(physics, torch.nn.Module):
        op.physics = physics  # a submodule: op.to(device) moves the physics' buffers (its mask, its filter) too
    return op
