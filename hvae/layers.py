"""Bottleneck residual blocks (vdvae style): 1x1 -> kxk -> kxk -> 1x1 with GELU before each conv."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


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
    """x -> [x +] conv1x1(gelu(conv_k(gelu(conv_k(gelu(conv1x1(gelu(x)))))))).

    Padding is 'same' with zeros and there is no normalisation layer, so the block is fully
    convolutional and its output on a tile does not depend on statistics of the whole image.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int = 3, residual: bool = False,
                 zero_last: bool = False, last_scale: float = 1.0) -> None:
        super().__init__()
        self.c1 = conv(in_ch, mid_ch, 1)
        self.c2 = conv(mid_ch, mid_ch, kernel)
        self.c3 = conv(mid_ch, mid_ch, kernel)
        self.c4 = conv(mid_ch, out_ch, 1, zero_init=zero_last, scale=last_scale)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        return x + h if self.residual else h
