"""Parameter and FLOP counts of a hierarchical VAE, on the meta device (no memory, no arithmetic).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add of the
convolutions (and matrix products); element-wise operations are not counted. This is the convention of
the published figure for PnP-HVAE's network (5.63 MFLOP per pixel per z-step = 2.81 M multiply-adds).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import HVAEConfig
from .model import HierarchicalVAE


def meta_model(config: HVAEConfig) -> HierarchicalVAE:
    """The model of ``config`` with parameters on the meta device (shapes only)."""
    with torch.device("meta"):
        return HierarchicalVAE(config)


def parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters, fixed ones (requires_grad False) included."""
    return sum(p.numel() for p in model.parameters())


def zstep_flops(config: HVAEConfig, height: int, width: int, batch: int = 1, tau: float = 0.8) -> int:
    """FLOPs of one PnP-HVAE z-step on [batch, C, height, width]: the encoder's bottom-up pass, the
    top-down pass with the tempered-mode rule and the decoder output G(z) (``encode_decode``)."""
    model = meta_model(config)
    x = torch.zeros(batch, config.image_channels, height, width, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_decode(x, tau)
    return int(counter.get_total_flops())


def training_step_flops(config: HVAEConfig, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of the ELBO forward and backward passes on [batch, C, height, width] (the optimiser not counted)."""
    model = meta_model(config)
    x = torch.zeros(batch, config.image_channels, height, width, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.elbo(x).loss.backward()
    return int(counter.get_total_flops())
