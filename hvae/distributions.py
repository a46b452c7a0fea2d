"""Diagonal Gaussians: analytic KL, log density, sampling and the tempered mode of PnP-HVAE's z-step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class DiagonalGaussian:
    """N(mean, exp(log_std)^2) elementwise; mean and log_std have the same shape [N, C, h, w]."""

    mean: Tensor
    log_std: Tensor

    @staticmethod
    def standard_like(x: Tensor) -> "DiagonalGaussian":
        return DiagonalGaussian(torch.zeros_like(x), torch.zeros_like(x))

    def sample(self, generator: torch.Generator | None = None, tau: float | Tensor = 1.0) -> Tensor:
        """Draw mean + tau * std * eps with eps ~ N(0, I) from ``generator``."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + tau * torch.exp(self.log_std) * eps

    def log_prob(self, z: Tensor, tau: float | Tensor = 1.0) -> Tensor:
        """Elementwise log N(z; mean, (tau * std)^2)."""
        log_std = self.log_std + (math.log(tau) if isinstance(tau, (int, float)) else torch.log(tau))
        return -_HALF_LOG_2PI - log_std - 0.5 * ((z - self.mean) * torch.exp(-log_std)) ** 2


def kl_divergence(q: DiagonalGaussian, p: DiagonalGaussian) -> Tensor:
    """Elementwise KL(q || p) = log(s_p/s_q) + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2."""
    inv_var_p = torch.exp(-2 * p.log_std)
    return (p.log_std - q.log_std - 0.5
            + 0.5 * (torch.exp(2 * q.log_std) + (q.mean - p.mean) ** 2) * inv_var_p)


def tempered_mode(q: DiagonalGaussian, p: DiagonalGaussian, tau: float | Tensor) -> Tensor:
    """argmax_z log q(z) + (1/tau^2 - 1) log p(z), for 0 < tau <= 1.

    With precisions a = 1/s_q^2 and b = (1/tau^2 - 1)/s_p^2 the maximiser is the precision-weighted
    mean (a mu_q + b mu_p) / (a + b): tau = 1 gives mu_q and tau -> 0 gives mu_p. ``tau`` may be a
    float or a tensor broadcastable to the latent (e.g. [N, 1, 1, 1] for one value per image).
    """
    if isinstance(tau, (int, float)):
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tempered-mode tau must be in (0, 1], got {tau}")
        if tau == 1.0:
            return q.mean  # b = 0: the encoder's mean, with no arithmetic
        log_weight = math.log(1.0 / tau**2 - 1.0)
    else:
        if bool((tau <= 0).any()) or bool((tau > 1).any()):
            raise ValueError("tempered-mode tau must be in (0, 1]")
        log_weight = torch.log(1.0 / tau**2 - 1.0)  # -inf at tau = 1, where the weight below is 0
    # The mean moves from mu_q towards mu_p by b / (a + b) = sigmoid(log(b / a)), with
    # log(b / a) = log(1/tau^2 - 1) + 2 (log s_q - log s_p): finite for any tau, and 3 operations fewer than
    # (a mu_q + b mu_p) / (a + b) (the z-step runs this once per latent group).
    return torch.lerp(q.mean, p.mean, torch.sigmoid(2 * (q.log_std - p.log_std) + log_weight))
