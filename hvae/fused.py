"""Inference copy of a trained HVAE whose decoder groups run their prior and posterior nets as one net.

In a decoder group (:class:`hvae.model.DecoderGroup`) the posterior net reads act([state, skip]) and the
prior net act(state); both are bottleneck blocks (1x1 -> kxk -> kxk -> 1x1). Stacked, they are one block:

- first 1x1 conv on act([state, skip]): W1 = [[W1_q], [W1_p, 0]] (the prior's rows see no skip channels),
  2*mid outputs;
- the two kxk convs as one grouped conv (groups=2): the posterior's mid channels, then the prior's;
- last 1x1 conv, block-diagonal, as two: the statistics [posterior (2 zc) | prior (2 zc)], and the prior's state
  increment (width channels) as a tensor of its own. Sliced out of one output, the increment would be a strided
  view in channels_last, and CUDA's eager add of a strided operand to the state runs a non-vectorised kernel:
  323 against about 54 us per add of 256 x 320 x 448 bf16 values on an H200 (the third call's profile of the
  fused pass, BENCHMARKS.md), 12 such adds per iteration at full resolution.

The numbers are the same up to the order of floating-point sums; the group runs 10 convolutions instead
of 13 (5 instead of 8 for the two nets) and reads act(state) once, for about 7% more multiply-adds (the zero blocks of
the 1x1 convs). Nothing changes in training: the copy is for the z-step (:func:`restore.jpmap.network_for`
with ``JPMAPConfig(fuse_nets=True)``); it shares no parameter with the model it came from.

:func:`pointwise_as_matmul` is another inference change, for channels_last GPUs: each 1x1 convolution of a copy
runs as one matrix product with its bias in the product's epilogue (``addmm``), where cuDNN runs the convolution
and then a separate bias-add kernel over its whole output (``JPMAPConfig(pointwise_matmul=True)``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import Block
from .model import DecoderGroup, HierarchicalVAE


class FusedNets(nn.Module):
    """The posterior and prior nets of one decoder group as one bottleneck block (see the module docstring)."""

    def __init__(self, posterior: Block, prior: Block, width: int, zc: int) -> None:
        super().__init__()
        self.act, self.width, self.zc = posterior.act, width, zc
        mid, kernel = posterior.c2.in_channels, posterior.c2.kernel_size[0]
        in_q, out_p = posterior.c1.in_channels, prior.c4.out_channels  # width + skip, 2 zc + width
        dev, dt = posterior.c1.weight.device, posterior.c1.weight.dtype
        self.mid = mid
        self.c1 = nn.Conv2d(in_q, 2 * mid, 1, device=dev, dtype=dt)
        self.c2 = nn.Conv2d(2 * mid, 2 * mid, kernel, padding=kernel // 2, groups=2, device=dev, dtype=dt)
        self.c3 = nn.Conv2d(2 * mid, 2 * mid, kernel, padding=kernel // 2, groups=2, device=dev, dtype=dt)
        self.c4 = nn.Conv2d(2 * mid, 4 * zc, 1, device=dev, dtype=dt)  # posterior then prior statistics
        self.c4_increment = nn.Conv2d(2 * mid, out_p - 2 * zc, 1, device=dev, dtype=dt)  # the prior's state increment
        with torch.no_grad():
            self.c1.weight.zero_()
            self.c1.weight[:mid] = posterior.c1.weight
            self.c1.weight[mid:, :width] = prior.c1.weight
            self.c1.bias.copy_(torch.cat([posterior.c1.bias, prior.c1.bias]))
            for fused, q, p in ((self.c2, posterior.c2, prior.c2), (self.c3, posterior.c3, prior.c3)):
                fused.weight.copy_(torch.cat([q.weight, p.weight]))  # [2 mid, mid, k, k]: group 0 then group 1
                fused.bias.copy_(torch.cat([q.bias, p.bias]))
            self.c4.weight.zero_()
            self.c4.weight[: 2 * zc, :mid] = posterior.c4.weight
            self.c4.weight[2 * zc:, mid:] = prior.c4.weight[: 2 * zc]
            self.c4.bias.copy_(torch.cat([posterior.c4.bias, prior.c4.bias[: 2 * zc]]))
            self.c4_increment.weight.zero_()
            self.c4_increment.weight[:, mid:] = prior.c4.weight[2 * zc:]
            self.c4_increment.bias.copy_(prior.c4.bias[2 * zc:])

    def forward(self, state: Tensor, skip: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(posterior net output [N, 2 zc, h, w], prior statistics [N, 2 zc, h, w], state increment
        [N, width, h, w]), as :meth:`hvae.model.DecoderGroup.nets`."""
        h = self.c1(self.act(torch.cat([state, skip], 1)))
        h = self.act(self.c3(self.act(self.c2(self.act(h)))))
        stats = self.c4(h)
        return stats[:, : 2 * self.zc], stats[:, 2 * self.zc:], self.c4_increment(h)

    def prior_only(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """The prior net alone (no encoded image: sampling, decoding given latents), from the fused weights:
        (statistics [N, 2 zc, h, w], state increment [N, width, h, w])."""
        m, w = self.mid, self.width
        h = F.conv2d(self.act(state), self.c1.weight[m:, :w], self.c1.bias[m:])
        for c in (self.c2, self.c3):
            h = F.conv2d(self.act(h), c.weight[m:], c.bias[m:], padding=c.padding)
        h = self.act(h)
        return (F.conv2d(h, self.c4.weight[2 * self.zc:, m:], self.c4.bias[2 * self.zc:]),
                F.conv2d(h, self.c4_increment.weight[:, m:], self.c4_increment.bias))


class FusedDecoderGroup(DecoderGroup):
    """A :class:`DecoderGroup` with a learned prior whose two nets run as :class:`FusedNets`; the group's forward
    pass is inherited, only :meth:`nets` differs.

    Takes over the group's ``z_proj`` and ``resnet`` (build it from a copy, as :func:`fuse_nets` does)."""

    def __init__(self, group: DecoderGroup) -> None:
        nn.Module.__init__(self)  # not DecoderGroup's: its nets are replaced, its other modules taken over
        width = group.resnet.c1.in_channels
        self.zc, self.standard_prior, self.min_log_std = group.zc, False, group.min_log_std
        self.fused = FusedNets(group.posterior_net, group.prior_net, width, group.zc)
        self.z_proj, self.resnet = group.z_proj, group.resnet

    def nets(self, state: Tensor, act: Tensor | None) -> tuple[Tensor | None, Tensor, Tensor]:
        return (None, *self.fused.prior_only(state)) if act is None else self.fused(state, act)


def fuse_nets(model: HierarchicalVAE) -> HierarchicalVAE:
    """A copy of ``model`` for inference whose decoder groups with a learned prior are fused (module docstring)."""
    if not isinstance(model, HierarchicalVAE):
        raise TypeError(f"fuse_nets needs a HierarchicalVAE, got {type(model).__name__}")
    fused = copy.deepcopy(model)
    fused.groups = nn.ModuleList([g if g.prior_net is None else FusedDecoderGroup(g) for g in fused.groups])
    return fused


class PointwiseMatmul(nn.Conv2d):
    """A 1x1 convolution (stride 1, no groups) that, on a channels_last input, runs as one matrix product with its
    bias added in the product's epilogue: out[n, h, w, :] = x[n, h, w, :] @ W^T + b over the NHWC rows, a view in
    and a view out (no copy). Other inputs take the convolution. Same weights and numbers up to float rounding."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # [N*H*W, C_in], a view of the NHWC memory
        weight = self.weight.reshape(self.out_channels, c)  # [C_out, C_in]
        out = torch.addmm(self.bias, rows, weight.t()) if self.bias is not None else rows @ weight.t()
        return out.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)  # [N, C_out, H, W], channels_last


def is_pointwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.padding in ((0, 0), "valid") and module.dilation == (1, 1) and module.groups == 1)


def pointwise_as_matmul(model: nn.Module) -> int:
    """Turns every plain 1x1 convolution of ``model`` (in place: use it on an inference copy) into a
    :class:`PointwiseMatmul`; returns how many."""
    count = 0
    for module in model.modules():
        if is_pointwise(module):
            module.__class__ = PointwiseMatmul  # the same parameters and attributes, another forward
            count += 1
    return count
