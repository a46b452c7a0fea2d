"""Baselines run on the same operators and result type as :func:`restore.jpmap.jpmap`.

- :func:`adam_joint`: Adam on J(x, z) = ||A x - y||^2/(2 sigma^2) + ||x - G(z)||^2/(2 gamma^2) - log p_tau(z)
  over x and all latents jointly (the comparison of Gonzalez et al. and Prost et al.); :func:`joint_terms`, J's
  three terms at a given (x, z).
- :func:`tikhonov`: argmin ||A x - y||^2/(2 sigma^2) + ||grad x||^2/(2 s^2) (Wiener filter with a
  gradient prior), solved by conjugate gradient.
- :func:`total_variation`: argmin ||A x - y||^2/(2 sigma^2) + lam * TV(x) (isotropic), by Chambolle-Pock
  with the operator's exact prox as the primal step.

Both take finite differences on x's grid: circular, but for a valid blur or super-resolution, whose x is a piece
of a scene that goes on past it, Neumann (no difference across the grid's last row and column).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .cg import conjugate_gradient
from .jpmap import History, RestoreResult, _autocast, initial_x, z_step
from .prior import Prior, crop
from .operators import MatrixFree


@dataclass(frozen=True)
class AdamConfig:
    gamma: float = 10 / 255
    tau: float | tuple[float, ...] = 0.8
    tau_end: float | None = None
    lr: float = 1e-2
    max_iters: int = 200
    init: str = "auto"
    init_tau: float = 1.0  # z_0 = E_tau(x_0)
    precision: str = "fp32"
    return_estimate: str = "x"

    def taus(self, num_groups: int) -> list[float]:
        from .jpmap import JPMAPConfig
        return JPMAPConfig(gamma=self.gamma, tau=self.tau, tau_end=self.tau_end).taus(num_groups)


def joint_terms(y: Tensor, operator, prior: Prior, x: Tensor, latents: list[Tensor], taus: list[float], gamma: float,
                precision: str = "fp32") -> tuple[Tensor, Tensor, Tensor]:
    """J(x, z)'s terms per image, [N] each: ||A x - y||^2 / (2 sigma^2), ||x - G(z)||^2 / (2 gamma^2) and
    log p_tau(z) (J = data + coupling - log p); the network pass under ``precision``'s autocast."""
    with _autocast(x, precision):
        decoded_pad, log_p = prior.decode_log_prior(latents, taus)
    decoded = crop(decoded_pad.float(), tuple(x.shape[-2:]))
    data = ((operator.A(x) - y) ** 2).flatten(1).sum(1) / (2 * operator.sigma**2)
    coupling = ((x - decoded) ** 2).flatten(1).sum(1) / (2 * gamma**2)
    return data, coupling, log_p


def adam_joint(y: Tensor, operator, prior: Prior, config: AdamConfig = AdamConfig(),
               x0: Tensor | None = None) -> RestoreResult:
    """Minimise J(x, z) (module docstring) with Adam from x_0 = init(y), z_0 = E_{init_tau}(x_0)."""
    taus = config.taus(prior.num_groups)
    gamma = config.gamma
    with torch.no_grad():
        x = initial_x(y, operator, config.init) if x0 is None else x0.clone()
        latents, _ = z_step(prior, x, [config.init_tau] * prior.num_groups, config.precision)
    x = x.detach().requires_grad_(True)
    latents = [z.detach().float().requires_grad_(True) for z in latents]
    opt = torch.optim.Adam([x, *latents], lr=config.lr)
    n_pix = x[0].numel()
    history, start = History(), time.perf_counter()
    prev = x.detach().clone()
    for k in range(1, config.max_iters + 1):
        opt.zero_grad(set_to_none=True)
        data, coupling, log_p = joint_terms(y, operator, prior, x, latents, taus, gamma, config.precision)
        loss = (data + coupling - log_p.float()).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            r = float(((x - prev) ** 2).mean().sqrt())
            history.ratio.append(r / history.residual[-1] if history.residual and history.residual[-1] > 0 else math.nan)
            history.residual.append(r)
            history.data_term.append(float(data.mean()) / n_pix)
            history.coupling_term.append(float(coupling.mean()) / n_pix)
            history.prior_term.append(float(-log_p.mean()) / n_pix)
            history.seconds.append(time.perf_counter() - start)
            prev.copy_(x)
    with torch.no_grad(), _autocast(x, config.precision):
        decoded = crop(prior.decode_log_prior(latents, taus)[0].float(), tuple(x.shape[-2:]))
    x = x.detach()
    estimate = x if config.return_estimate == "x" else decoded
    return RestoreResult(estimate, x, decoded, history, config.max_iters, False, time.perf_counter() - start)


def _grad(x: Tensor, wrap: bool = True) -> Tensor:
    """Forward differences, [N, 2, C, H, W]: circular (``wrap``), or zero across the last row and column (Neumann:
    the grid of a valid operator's x is a piece of a scene that does not wrap around)."""
    g = torch.stack([torch.roll(x, -1, -2) - x, torch.roll(x, -1, -1) - x], 1)
    if not wrap:
        g[:, 0, ..., -1, :] = 0
        g[:, 1, ..., :, -1] = 0
    return g


def _div(g: Tensor, wrap: bool = True) -> Tensor:
    """Negative adjoint of :func:`_grad` (with the same ``wrap``)."""
    if wrap:
        return (g[:, 0] - torch.roll(g[:, 0], 1, -2)) + (g[:, 1] - torch.roll(g[:, 1], 1, -1))
    rows, cols = g[:, 0].clone(), g[:, 1].clone()
    rows[..., -1, :] = 0
    cols[..., :, -1] = 0
    return (rows - F.pad(rows, (0, 0, 1, 0))[..., :-1, :]) + (cols - F.pad(cols, (1, 0))[..., :, :-1])


def _wraps(operator) -> bool:
    """Whether the operator's x grid wraps around (every built-in operator but a valid blur or super-resolution;
    a MatrixFree operator says so itself)."""
    return getattr(operator, "wraps", not getattr(operator, "valid", False))


def _warm_prox(operator):
    """The x-step by conjugate gradients from a given start, for operators without a closed form (else None)."""
    if getattr(operator, "valid", False):
        return operator.prox_l2_valid
    if isinstance(operator, MatrixFree) and operator.exact_prox is None:
        return operator.prox_l2_cg
    return None


@torch.no_grad()
def tikhonov(y: Tensor, operator, grad_std: float = 0.05, max_iters: int = 200, tol: float = 1e-6) -> RestoreResult:
    """argmin ||A x - y||^2/(2 sigma^2) + ||grad x||^2/(2 grad_std^2), by conjugate gradient."""
    start = time.perf_counter()
    s2, g2, wrap = operator.sigma**2, grad_std**2, _wraps(operator)

    def normal(v: Tensor) -> Tensor:
        return operator.A_adjoint(operator.A(v)) / s2 - _div(_grad(v, wrap), wrap) / g2

    solved = conjugate_gradient(normal, operator.A_adjoint(y) / s2, operator.init(y), tol=tol, max_iters=max_iters)
    x, k, history = solved.solution, solved.iterations, History()
    history.seconds.append(time.perf_counter() - start)
    return RestoreResult(x, x, x, history, k, True, time.perf_counter() - start)


@torch.no_grad()
def total_variation(y: Tensor, operator, lam: float = 0.02, max_iters: int = 300, tol: float = 1e-5) -> RestoreResult:
    """argmin ||A x - y||^2/(2 sigma^2) + (lam / sigma^2) TV(x) (TV isotropic; circular, or Neumann for a valid
    operator's grid), by Chambolle-Pock on the same objective divided by lam / sigma^2,

        min_x ||A x - y||^2 / (2 lam) + TV(x):   p = proj_{|p| <= 1}(p + s grad x_bar),
        x_new = argmin_x ||A x - y||^2 / (2 lam) + ||x - (x + t div p)||^2 / (2 t)  (the operator's prox_l2 with
        gamma = sigma sqrt(t / lam)),   x_bar = 2 x_new - x,   s = t = 1/sqrt(8) (||grad||^2 <= 8),

    so that the dual ball has radius 1 whatever the noise (with radius lam / sigma^2 the dual variable, moving by
    s |grad x| per step, took thousands of steps to reach it). ``lam`` is the TV weight relative to the data term's
    1/(2 sigma^2) scale, so one value works across noise levels. Stops when both the primal change (RMS) and the
    dual one (RMS) are below ``tol``: from a start whose Laplacian vanishes where the data say nothing (the harmonic
    inpainting start) the first primal steps are near 0 while the dual variable is still building up.
    """
    start = time.perf_counter()
    step_p = step_d = 1.0 / math.sqrt(8.0)  # ||grad||^2 <= 8
    gamma = operator.sigma * math.sqrt(step_p / lam)
    x, wrap = operator.init(y), _wraps(operator)
    warm = _warm_prox(operator)
    x_bar, dual = x.clone(), torch.zeros_like(_grad(x, wrap))
    history, k = History(), 0
    for k in range(1, max_iters + 1):
        dual_new = dual + step_d * _grad(x_bar, wrap)
        dual_new = dual_new / dual_new.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1)  # onto the unit ball
        dual_res = float(((dual_new - dual) ** 2).mean().sqrt())
        dual = dual_new
        v = x + step_p * _div(dual, wrap)
        if warm is not None:  # conjugate gradients from the previous x, as the prox point moves little
            x_new = warm(v, y, gamma, x0=x).solution.to(x.dtype)
        else:
            x_new = operator.prox_l2(v, y, gamma)
        x_bar = 2 * x_new - x
        res = float(((x_new - x) ** 2).mean().sqrt())
        x = x_new
        history.residual.append(res)
        if res < tol and dual_res < tol:
            break
    history.seconds.append(time.perf_counter() - start)
    return RestoreResult(x, x, x, history, k, k < max_iters, time.perf_counter() - start)
