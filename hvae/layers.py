"""Bottleneck residual blocks (vdvae style): 1x1 -> kxk -> kxk -> 1x1 with a non-linearity before each conv."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


def conv(in_ch: int, out_ch: int, kernel: int, zero_init: bool = False, scale: float = 1.0) -> nn.Conv2d:
    layer = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    if zero_init:
        nn.init.zeros_(layer.weight)
    elif scale != 1.0:
        with torch.no_grad():
            layer.weight.mul_(scale)
    nn.init.zeros_(layer.bias)
    return layer


class Block(nn.Module):
    """x -> [x +] conv1x1(act(conv_k(act(conv_k(act(conv1x1(act(x)))))))), act = GELU (default) or SiLU.

    Padding is 'same' with zeros and there is no normalisation layer, so the block is fully
    convolutional and its output on a tile does not depend on statistics of the whole image.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int = 3, residual: bool = False,
                 zero_last: bool = False, last_scale: float = 1.0, activation: str = "gelu") -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.c1 = conv(in_ch, mid_ch, 1)
        self.c2 = conv(mid_ch, mid_ch, kernel)
        self.c3 = conv(mid_ch, mid_ch, kernel)
        self.c4 = conv(mid_ch, out_ch, 1, zero_init=zero_last, scale=last_scale)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(self.act(x))
        h = self.c2(self.act(h))
        h = self.c3(self.act(h))
        h = self.c4(self.act(h))
        return x + h if self.residual else h
