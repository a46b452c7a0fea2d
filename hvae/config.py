"""Frozen configuration of a hierarchical VAE; stored as a plain dict in checkpoints and exports."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class HVAEConfig:
    """Architecture of a fully convolutional hierarchical VAE (vdvae / Efficient-VDVAE style).

    Levels are listed bottom-up: level 0 works at full resolution, and after the blocks of level i
    the encoder down-samples by ``strides[i]``. The decoder mirrors this top-down. The top latent
    is an N(0, I) map of size H/r x W/r with r = prod(strides); no parameter depends on H, W.

    The defaults of ``encoder_widths``, ``downsample``, ``upsample`` and ``activation`` give the
    original layout of this project (priors exported before these fields existed load unchanged);
    ``configs/patchvdvae.yaml`` sets them to reproduce the published PnP-HVAE natural-image network
    (Efficient-VDVAE style: strided-conv pooling, 1x1-conv unpooling, SiLU, a narrower first encoder level).
    """

    image_channels: int = 3
    stem_channels: int = 32  # width of the input convolution
    widths: tuple[int, ...] = (32, 32, 32)  # residual-stream width of each level
    strides: tuple[int, ...] = (2, 2, 1)  # down-sampling after each level (bottom-up)
    encoder_blocks: tuple[int, ...] = (1, 1, 1)  # residual blocks per level
    latent_groups: tuple[int, ...] = (1, 1, 1)  # latent groups (decoder blocks) per level
    kernel_sizes: tuple[int, ...] = (3, 3, 3)  # spatial kernel of each level's blocks (1 or 3)
    skip_channels: int = 0  # 0: encoder activations passed at full width; >0: projected to this width
    latent_channels: int = 8  # channels of each latent group
    bottleneck_ratio: float = 0.25  # middle width of a residual block = ratio * width
    likelihood: str = "gaussian_learned"  # "gaussian_learned" (one learned gamma per channel) or "gaussian_fixed"
    decoder_gamma: float = 0.05  # initial (learned) or fixed decoder std, in [0, 1] image units
    min_decoder_gamma: float = 1e-3  # floor of the learned decoder std
    prior_log_std_min: float = -7.0  # clamp of predicted log std (numerical safety)
    encoder_widths: tuple[int, ...] = ()  # residual width of each encoder level; () = the same as ``widths``
    downsample: str = "avg_pool"  # "avg_pool" or "conv" (strided conv, kernel = stride, to the next encoder width)
    upsample: str = "nearest"  # "nearest" (then 1x1 conv if the width changes) or "conv_nearest" (1x1 conv, then up)
    activation: str = "gelu"  # non-linearity inside residual blocks: "gelu" or "silu"

    def __post_init__(self) -> None:
        for name in ("widths", "strides", "encoder_blocks", "latent_groups", "kernel_sizes", "encoder_widths"):
            value = getattr(self, name)
            if isinstance(value, list):  # YAML / JSON gives lists: store tuples so the config stays hashable
                object.__setattr__(self, name, tuple(value))
        n = len(self.widths)
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {self.image_channels}")
        for name in ("strides", "encoder_blocks", "latent_groups", "kernel_sizes"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != n:
                raise ConfigError(f"{name} must list one value per level ({n} levels from widths), got {value!r}")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{name} must hold integers, got {value!r}")
        if n == 0 or any(w <= 0 for w in self.widths):
            raise ConfigError(f"widths must be positive and non-empty, got {self.widths!r}")
        if any(s < 1 for s in self.strides):
            raise ConfigError(f"strides must be >= 1, got {self.strides!r}")
        if any(g < 1 for g in self.latent_groups) or any(b < 0 for b in self.encoder_blocks):
            raise ConfigError("latent_groups must be >= 1 and encoder_blocks >= 0 at every level")
        if any(k not in (1, 3) for k in self.kernel_sizes):
            raise ConfigError(f"kernel_sizes must be 1 or 3, got {self.kernel_sizes!r}")
        if self.likelihood not in ("gaussian_learned", "gaussian_fixed"):
            raise ConfigError(f"likelihood must be 'gaussian_learned' or 'gaussian_fixed', got {self.likelihood!r}")
        if not (0 < self.bottleneck_ratio <= 4):
            raise ConfigError(f"bottleneck_ratio must be in (0, 4], got {self.bottleneck_ratio}")
        if not (self.decoder_gamma > 0 and self.min_decoder_gamma > 0):
            raise ConfigError("decoder_gamma and min_decoder_gamma must be > 0")
        if self.latent_channels < 1 or self.stem_channels < 1 or self.skip_channels < 0:
            raise ConfigError("latent_channels and stem_channels must be >= 1, skip_channels >= 0")
        if self.encoder_widths and (len(self.encoder_widths) != n or any(
                not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in self.encoder_widths)):
            raise ConfigError(f"encoder_widths must be empty or list one positive integer per level ({n} levels), "
                              f"got {self.encoder_widths!r}")
        if self.downsample not in ("avg_pool", "conv"):
            raise ConfigError(f"downsample must be 'avg_pool' or 'conv', got {self.downsample!r}")
        if self.upsample not in ("nearest", "conv_nearest"):
            raise ConfigError(f"upsample must be 'nearest' or 'conv_nearest', got {self.upsample!r}")
        if self.activation not in ("gelu", "silu"):
            raise ConfigError(f"activation must be 'gelu' or 'silu', got {self.activation!r}")

    @property
    def multiple(self) -> int:
        """Total down-sampling factor r: image sides must be multiples of it."""
        return math.prod(self.strides)

    @property
    def encoder_level_widths(self) -> tuple[int, ...]:
        """Residual width of each encoder level (``encoder_widths``, or ``widths`` when that is empty)."""
        return self.encoder_widths or self.widths

    @property
    def num_groups(self) -> int:
        return sum(self.latent_groups)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HVAEConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; known keys: {sorted(known)}")
        for key, value in d.items():
            default = known[key].default
            expected = type(default)
            ok = isinstance(value, (list, tuple)) if expected is tuple else (
                isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float
                else isinstance(value, expected) and not (expected is int and isinstance(value, bool)))
            if not ok:
                raise ConfigError(f"model config key {key!r} must be {expected.__name__}, got {value!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

