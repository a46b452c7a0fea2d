"""What the restoration side needs from a prior, and reflection padding to the prior's multiple."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor
from torch.nn import functional as F


class Prior(Protocol):
    """The small protocol ``restore`` uses (implemented by :class:`hvae.model.HierarchicalVAE`)."""

    multiple: int
    image_channels: int
    num_groups: int

    def encode_decode(self, x: Tensor, tau) -> tuple[list[Tensor], Tensor]: ...

    def decode_log_prior(self, latents: Sequence[Tensor], tau) -> tuple[Tensor, Tensor]: ...


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad the bottom and right of ``x`` [N, C, H, W] to multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflection needs the pad to be smaller than the side
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x[..., : size[0], : size[1]]
