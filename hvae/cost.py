"""Parameter and FLOP counts of a hierarchical VAE, on the meta device (no memory, no arithmetic).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add of the
convolutions (and matrix products); element-wise operations are not counted. This is the convention of
the published figure for PnP-HVAE's network (5.63 MFLOP per pixel per z-step = 2.81 M multiply-adds).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
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
    return zstep_op_counts(config, height, width, batch=batch, tau=tau)["flops"]


def training_step_flops(config: HVAEConfig, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of the ELBO forward and backward passes on [batch, C, height, width] (the optimiser not counted)."""
    model = meta_model(config)
    x = torch.zeros(batch, config.image_channels, height, width, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.elbo(x).loss.backward()
    return int(counter.get_total_flops())


_NO_DATA = {"view", "_unsafe_view", "reshape", "slice", "select", "split", "split_with_sizes", "chunk", "permute",
            "t", "expand", "alias", "detach", "unsqueeze", "squeeze", "as_strided"}  # views: no memory traffic


class _OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched (after autograd): in eager mode, about one kernel each; and the
    elements the convolutions read and write (input, output) and the other operators write."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.conv_elements = 0
        self.elementwise_elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        if name == "convolution":
            self.conv_elements += args[0].numel() + out.numel()
        elif isinstance(out, torch.Tensor) and name not in _NO_DATA:
            self.elementwise_elements += out.numel()
        return out


def zstep_op_counts(config: HVAEConfig, height: int, width: int, batch: int = 1, fused: bool = False,
                    tau: float = 0.8) -> dict:
    """What one z-step (``encode_decode`` on [batch, C, height, width]) dispatches, on the meta device:
    ``convolutions``, ``operators`` (all aten operators, views included), ``flops`` (as executed: the fused
    nets of :mod:`hvae.fused` multiply by their zero blocks too), ``conv_elements`` (the elements the convolutions
    read and write: each one's input and output, once; weights not counted) and ``elementwise_elements`` (the
    elements the other, non-view operators write: SiLU, adds, concatenations...). Times 2 bytes in bf16, these
    are the memory traffic that no kernel fusion removes (the convolutions') and what eager mode adds to it
    (each element-wise output written, and read at least once). ``fused``: on :func:`hvae.fused.fuse_nets`'s copy."""
    model = meta_model(config)
    if fused:
        from .fused import fuse_nets
        model = fuse_nets(model)
    x = torch.zeros(batch, config.image_channels, height, width, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as flops, _OpCounter() as ops:
        model.encode_decode(x, tau)
    return {"convolutions": ops.counts["convolution"], "operators": sum(ops.counts.values()),
            "flops": int(flops.get_total_flops()), "conv_elements": ops.conv_elements,
            "elementwise_elements": ops.elementwise_elements}
