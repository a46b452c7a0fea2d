"""Per-group latent rules for the single top-down pass of :class:`hvae.model.HierarchicalVAE`.

A rule is called once per latent group, top-down, as ``rule(index, posterior, prior) -> z``:
``index`` counts groups from the top (0) to the bottom (G - 1), ``posterior`` is q(z_l | z_<l, x)
(None when no image is encoded) and ``prior`` is p(z_l | z_<l), both :class:`DiagonalGaussian`
conditioned on the latents already chosen above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .distributions import DiagonalGaussian, tempered_mode

TauSpec = float | Sequence[float]


class LatentRule(Protocol):
    needs_posterior: bool

    def __call__(self, index: int, posterior: DiagonalGaussian | None, prior: DiagonalGaussian) -> Tensor: ...


def linear_tau(start: float, end: float, num_groups: int) -> list[float]:
    """tau linear from the top group (``start``) to the bottom group (``end``)."""
    if num_groups == 1:
        return [float(start)]
    return [start + (end - start) * i / (num_groups - 1) for i in range(num_groups)]


def resolve_tau(tau: TauSpec, num_groups: int, upper: float | None = None) -> list[float]:
    """One tau per group from a float or a per-group sequence; checks 0 < tau (<= upper)."""
    taus = [float(tau)] * num_groups if isinstance(tau, (int, float)) else [float(t) for t in tau]
    if len(taus) != num_groups:
        raise ValueError(f"tau lists {len(taus)} values but the model has {num_groups} latent groups; "
                         "give one value or one per group")
    for t in taus:
        if not t > 0 or (upper is not None and t > upper):
            bound = f"(0, {upper}]" if upper is not None else "(0, inf)"
            raise ValueError(f"tau must be in {bound}, got {t}")
    return taus


@dataclass
class PosteriorSample:
    """z_l ~ q(z_l | z_<l, x): the ELBO's reparameterised sample."""

    generator: torch.Generator | None = None
    needs_posterior: bool = True

    def __call__(self, index, posterior, prior):
        return posterior.sample(self.generator)


@dataclass
class PosteriorMean:
    """z_l = mean of q(z_l | z_<l, x)."""

    needs_posterior: bool = True

    def __call__(self, index, posterior, prior):
        return posterior.mean


class PriorSample:
    """z_l ~ N(mu_p, (tau_l s_p)^2): ancestral sampling at temperature tau (one value or one per group)."""

    needs_posterior = False

    def __init__(self, tau: TauSpec, num_groups: int, generator: torch.Generator | None = None) -> None:
        self.taus = resolve_tau(tau, num_groups)
        self.generator = generator

    def __call__(self, index, posterior, prior):
        return prior.sample(self.generator, self.taus[index])


class TemperedMode:
    """z_l = argmax q(z_l | z_<l, x) p(z_l | z_<l)^(1/tau_l^2 - 1): PnP-HVAE's encoder E_tau."""

    needs_posterior = True

    def __init__(self, tau: TauSpec, num_groups: int) -> None:
        self.taus = resolve_tau(tau, num_groups, upper=1.0)

    def __call__(self, index, posterior, prior):
        return tempered_mode(posterior, prior, self.taus[index])


class GivenLatents:
    """z_l = latents[l]: decode fixed latents (the decoder G(z))."""

    needs_posterior = False

    def __init__(self, latents: Sequence[Tensor]) -> None:
        self.latents = list(latents)

    def __call__(self, index, posterior, prior):
        z = self.latents[index]
        if z.shape != prior.mean.shape:
            raise ValueError(f"latent {index} has shape {tuple(z.shape)}, expected {tuple(prior.mean.shape)}")
        return z
