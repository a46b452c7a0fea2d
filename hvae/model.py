"""Fully convolutional hierarchical VAE with one top-down pass and pluggable per-group latent rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import HVAEConfig
from .distributions import DiagonalGaussian, kl_divergence
from .latent_rules import GivenLatents, LatentRule, PosteriorMean, PosteriorSample, PriorSample, TauSpec, TemperedMode
from .layers import Block, conv

_LOG2 = math.log(2.0)


def to_model_range(x: Tensor) -> Tensor:
    """[0, 1] image -> [-1, 1] network input. The only place where the range changes (with its inverse)."""
    return 2.0 * x - 1.0


def from_model_range(x: Tensor) -> Tensor:
    """[-1, 1] network output -> [0, 1] image."""
    return 0.5 * (x + 1.0)


@dataclass
class ELBO:
    """Negative ELBO of a batch. Per-dimension figures are per image pixel channel (C*H*W)."""

    loss: Tensor  # scalar: mean over the batch of the negative ELBO in nats/dim (what is minimised)
    nats_per_dim: Tensor  # [N]
    recon_per_dim: Tensor  # [N] reconstruction negative log-likelihood, nats/dim
    kl_per_group: Tensor  # [N, G] KL of each latent group, nats/dim, top group first
    reconstruction: Tensor  # [N, C, H, W] decoder mean in [0, 1]

    @property
    def bits_per_dim(self) -> Tensor:
        return self.nats_per_dim / _LOG2


@dataclass
class TopDown:
    mean: Tensor  # [N, C, H, W] decoder mean in model range [-1, 1]
    latents: list[Tensor]  # G tensors [N, latent_channels, h_l, w_l], top group first
    kl: list[Tensor]  # per group elementwise KL (only with keep_kl and an encoded image)
    priors: list[DiagonalGaussian]  # per group prior (only when keep_priors)


class EncoderLevel(nn.Module):
    def __init__(self, in_ch: int, width: int, blocks: int, kernel: int, skip: int, block_scale: float,
                 ratio: float, activation: str = "gelu") -> None:
        super().__init__()
        self.proj = conv(in_ch, width, 1) if in_ch != width else nn.Identity()
        mid = max(1, int(width * ratio))
        self.blocks = nn.Sequential(*[Block(width, mid, width, kernel, residual=True, last_scale=block_scale,
                                            activation=activation) for _ in range(blocks)])
        self.skip = conv(width, skip, 1) if skip else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.blocks(self.proj(x))
        return x, self.skip(x)


class DecoderGroup(nn.Module):
    """One latent group: prior p(z|state), posterior q(z|state, activation), then state update."""

    def __init__(self, width: int, act_ch: int, zc: int, kernel: int, ratio: float, block_scale: float,
                 standard_prior: bool, min_log_std: float, activation: str = "gelu") -> None:
        super().__init__()
        mid = max(1, int(width * ratio))
        self.zc, self.standard_prior, self.min_log_std = zc, standard_prior, min_log_std
        self.posterior_net = Block(width + act_ch, mid, 2 * zc, kernel, activation=activation)
        self.prior_net = None if standard_prior else Block(width, mid, 2 * zc + width, kernel, zero_last=True,
                                                           activation=activation)
        self.z_proj = conv(zc, width, 1, scale=block_scale)
        self.resnet = Block(width, mid, width, kernel, residual=True, last_scale=block_scale, activation=activation)

    def _gaussian(self, h: Tensor) -> DiagonalGaussian:
        mean, log_std = h.float().chunk(2, dim=1)  # fp32 statistics even under bf16 autocast
        return DiagonalGaussian(mean, log_std.clamp(min=self.min_log_std))

    def nets(self, state: Tensor, act: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The posterior net's output [N, 2 zc, h, w] (None without an encoded image), then the prior net's
        statistics [N, 2 zc, h, w] and state increment [N, width, h, w] (both None for the N(0, I) top group).
        hvae.fused computes all three as one net."""
        h_q = self.posterior_net(torch.cat([state, act], 1)) if act is not None else None
        if self.prior_net is None:
            return h_q, None, None
        h_p = self.prior_net(state)
        return h_q, h_p[:, : 2 * self.zc], h_p[:, 2 * self.zc:]

    def forward(self, state: Tensor, act: Tensor | None, rule: LatentRule, index: int):
        h_q, prior_stats, increment = self.nets(state, act)
        posterior = None if h_q is None else self._gaussian(h_q)
        if prior_stats is None:
            shape = (state.shape[0], self.zc, *state.shape[2:])
            zeros = state.new_zeros(shape, dtype=torch.float32)  # fp32 statistics, as _gaussian gives
            prior = DiagonalGaussian(zeros, zeros)
        else:
            prior = self._gaussian(prior_stats)
            state = state + increment
        z = rule(index, posterior, prior)
        state = self.resnet(state + self.z_proj(z))
        return state, z, posterior, prior


class HierarchicalVAE(nn.Module):
    """Bottom-up residual encoder, top-down Gaussian latent groups, Gaussian decoder.

    Level i of the encoder works at resolution H / prod(strides[:i]) and the decoder mirrors it.
    The first (top) group has the fixed prior N(0, I) on an H/r x W/r map (r = ``multiple``) and the
    decoder state starts from zeros there, so no parameter depends on the image size.
    """

    def __init__(self, config: HVAEConfig) -> None:
        super().__init__()
        if config.strides[-1] != 1:
            raise ValueError(f"the last level's stride must be 1 (the top level has no level above it), "
                             f"got strides {config.strides}")
        self.config = config
        c = config
        n_enc = max(1, sum(c.encoder_blocks))
        n_dec = c.num_groups
        self.stem = conv(c.image_channels, c.stem_channels, 3)
        enc_widths = c.encoder_level_widths
        levels, pools, in_ch = [], [], c.stem_channels
        for i, (w, b, k, s) in enumerate(zip(enc_widths, c.encoder_blocks, c.kernel_sizes, c.strides)):
            levels.append(EncoderLevel(in_ch, w, b, k, c.skip_channels, math.sqrt(1 / n_enc), c.bottleneck_ratio,
                                       c.activation))
            in_ch = w
            if s > 1 and c.downsample == "conv":  # strided conv that also moves to the next level's width
                in_ch = enc_widths[i + 1]
                pool = nn.Conv2d(w, in_ch, s, stride=s)
                nn.init.zeros_(pool.bias)
                pools.append(pool)
            else:
                pools.append(nn.AvgPool2d(s) if s > 1 else nn.Identity())
        self.encoder = nn.ModuleList(levels)
        self.downsamplers = nn.ModuleList(pools)
        groups, self.group_level = [], []
        for level in reversed(range(len(c.widths))):
            w, act_ch = c.widths[level], c.skip_channels or enc_widths[level]
            for _ in range(c.latent_groups[level]):
                groups.append(DecoderGroup(w, act_ch, c.latent_channels, c.kernel_sizes[level], c.bottleneck_ratio,
                                           math.sqrt(1 / n_dec), standard_prior=not groups,
                                           min_log_std=c.prior_log_std_min, activation=c.activation))
                self.group_level.append(level)
        self.groups = nn.ModuleList(groups)
        # between levels (top-down), see _up: a 1x1 width change (always with upsample="conv_nearest")
        always = c.upsample == "conv_nearest"
        self.level_proj = nn.ModuleList(
            [conv(c.widths[i + 1], c.widths[i], 1) if always or c.widths[i + 1] != c.widths[i] else nn.Identity()
             for i in range(len(c.widths) - 1)])
        self.out = conv(c.widths[0], c.image_channels, 1)
        gamma0 = math.log(2 * c.decoder_gamma)  # model range is twice the image range
        self.log_gamma = nn.Parameter(torch.full((c.image_channels,), gamma0),
                                      requires_grad=c.likelihood == "gaussian_learned")
        # dtype of the decoder's residual stream (None: the model's); restore.jpmap.network_for sets bf16 on its
        # inference copy with JPMAPConfig(bf16_state=True). Not part of the config: it changes no weight.
        self.state_dtype: torch.dtype | None = None

    # ----------------------------------------------------------------------------- properties
    @property
    def multiple(self) -> int:
        return self.config.multiple

    @property
    def image_channels(self) -> int:
        return self.config.image_channels

    @property
    def num_groups(self) -> int:
        return self.config.num_groups

    def decoder_gamma(self) -> Tensor:
        """Decoder std per channel in [0, 1] image units, [C]."""
        return 0.5 * torch.exp(self.log_gamma).clamp(min=2 * self.config.min_decoder_gamma)

    # ----------------------------------------------------------------------------- passes
    def _check(self, height: int, width: int) -> None:
        r = self.multiple
        if height % r or width % r:
            raise ValueError(f"image size {height}x{width} is not a multiple of the model's factor {r}; "
                             f"pad or crop it to a multiple of {r}")

    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """Encoder activations per level, [N, act_ch, H / prod(strides[:i]), ...], from an image in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise ValueError(f"expected images of shape [N, {self.image_channels}, H, W], got {tuple(x.shape)}")
        self._check(*x.shape[-2:])
        h = self.stem(to_model_range(x))
        acts = []
        for level, down in zip(self.encoder, self.downsamplers):
            h, act = level(h)
            acts.append(act)
            h = down(h)
        return acts

    def _up(self, state: Tensor, level: int) -> Tensor:
        """Decoder state from level + 1 to ``level``: up-sampling by strides[level] and the 1x1 width change.

        upsample="nearest": nearest-neighbour first, then the 1x1 conv; "conv_nearest": the 1x1 conv at
        the coarse resolution, then nearest-neighbour (the same map, computed on fewer pixels).
        """
        stride, proj = self.config.strides[level], self.level_proj[level]
        if self.config.upsample == "conv_nearest":
            state = proj(state)
        if stride > 1:
            state = F.interpolate(state, scale_factor=stride, mode="nearest")
        return state if self.config.upsample == "conv_nearest" else proj(state)

    def top_down(self, rule: LatentRule, batch: int, height: int, width: int,
                 activations: Sequence[Tensor] | None = None, keep_priors: bool = False,
                 keep_kl: bool = False) -> TopDown:
        """The one top-down pass: each group's latent is chosen by ``rule`` (see latent_rules). ``keep_kl``:
        also each group's KL(q || p) (the ELBO; the z-step has no use for it), ``keep_priors``: each prior."""
        if rule.needs_posterior and activations is None:
            raise ValueError("this latent rule needs an encoded image (activations)")
        self._check(height, width)
        r, c = self.multiple, self.config
        # the model's device, and its dtype unless state_dtype says otherwise (not a convolution's dtype, which
        # restore.jpmap.network_for may hold in bf16)
        state = self.log_gamma.new_zeros(batch, c.widths[-1], height // r, width // r, dtype=self.state_dtype)
        latents, kls, priors, level = [], [], [], len(c.widths) - 1
        for index, group in enumerate(self.groups):
            while self.group_level[index] != level:  # move down one level
                level -= 1
                state = self._up(state, level)
            act = activations[level] if activations is not None else None
            state, z, posterior, prior = group(state, act, rule, index)
            latents.append(z)
            if keep_kl and posterior is not None:
                kls.append(kl_divergence(posterior, prior))
            if keep_priors:
                priors.append(prior)
        while level > 0:  # levels below the last latent group (when a level has no group)
            level -= 1
            state = self._up(state, level)
        return TopDown(self._mean(state), latents, kls, priors)

    def _mean(self, state: Tensor) -> Tensor:
        """The decoder mean from the last state, [N, C, H, W]: the output convolution in its weights' dtype with
        autocast off (fp32 under bf16 autocast). Rounded to bf16 (8 bits of mantissa), the mean was the largest
        error of a bf16 pass: with this, the iterate a bf16 pass gives JPMAP is 3.8e-4 RMS from the fp32 one, not
        1.07e-3 (shipped natural prior, 8 full CBSD68 images; BENCHMARKS.md, "bf16 against fp32")."""
        if state.device.type == "meta":  # hvae.cost (no autocast there; a constant to torch.compile, no graph break)
            return self.out(state)
        with torch.autocast(state.device.type, enabled=False):
            return self.out(state.to(self.out.weight.dtype))

    # ----------------------------------------------------------------------------- public API
    def log_likelihood(self, x: Tensor, mean: Tensor) -> Tensor:
        """Elementwise log-probability of 8-bit-binned x in [0, 1] under the discretised Gaussian decoder."""
        xm, mean = to_model_range(x.float()), mean.float()
        log_scale = torch.log(self.decoder_gamma() * 2).view(1, -1, 1, 1)
        inv_s = torch.exp(-log_scale)
        half_bin = 1.0 / 255.0
        centred = xm - mean
        cdf_plus = torch.special.ndtr((centred + half_bin) * inv_s)
        cdf_minus = torch.special.ndtr((centred - half_bin) * inv_s)
        log_cdf_plus = torch.special.log_ndtr((centred + half_bin) * inv_s)
        log_one_minus_cdf_minus = torch.special.log_ndtr(-(centred - half_bin) * inv_s)
        delta = (cdf_plus - cdf_minus).clamp(min=1e-12)
        log_pdf_mid = -0.5 * (centred * inv_s) ** 2 - log_scale - 0.5 * math.log(2 * math.pi) + math.log(2 * half_bin)
        middle = torch.where(delta > 1e-5, torch.log(delta), log_pdf_mid)
        return torch.where(xm < -0.999, log_cdf_plus, torch.where(xm > 0.999, log_one_minus_cdf_minus, middle))

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> ELBO:
        """Negative ELBO: -log p(x | z) + sum_l KL(q(z_l | z_<l, x) || p(z_l | z_<l)), z ~ q."""
        n, _, h, w = x.shape
        pass_ = self.top_down(PosteriorSample(generator), n, h, w, self.bottom_up(x), keep_kl=True)
        dims = x[0].numel()
        recon = -self.log_likelihood(x, pass_.mean).flatten(1).sum(1) / dims
        kl = torch.stack([k.flatten(1).sum(1) for k in pass_.kl], dim=1) / dims
        nats = recon + kl.sum(1)
        return ELBO(nats.mean(), nats, recon, kl, from_model_range(pass_.mean))

    def encode_decode(self, x: Tensor, tau: TauSpec) -> tuple[list[Tensor], Tensor]:
        """z = E_tau(x) (tempered mode, top-down) and G(z), in one pass."""
        n, _, h, w = x.shape
        pass_ = self.top_down(TemperedMode(tau, self.num_groups), n, h, w, self.bottom_up(x))
        return pass_.latents, from_model_range(pass_.mean)

    def encode(self, x: Tensor, tau: TauSpec = 1.0) -> list[Tensor]:
        """Tempered latents z = E_tau(x); tau one value in (0, 1] or one per group (top first)."""
        return self.encode_decode(x, tau)[0]

    def decode(self, latents: Sequence[Tensor]) -> Tensor:
        """Decoder mean G(z) in [0, 1] (not clipped)."""
        top = latents[0]
        r = self.multiple
        pass_ = self.top_down(GivenLatents(latents), top.shape[0], top.shape[2] * r, top.shape[3] * r)
        return from_model_range(pass_.mean)

    def decode_log_prior(self, latents: Sequence[Tensor], tau: TauSpec = 1.0) -> tuple[Tensor, Tensor]:
        """G(z) and log p_tau(z) = sum_l log N(z_l; mu_p, (tau_l s_p)^2) per image, [N]."""
        from .latent_rules import resolve_tau
        taus = resolve_tau(tau, self.num_groups)
        top = latents[0]
        r = self.multiple
        pass_ = self.top_down(GivenLatents(latents), top.shape[0], top.shape[2] * r, top.shape[3] * r,
                              keep_priors=True)
        log_p = sum(p.log_prob(z, t).flatten(1).sum(1) for p, z, t in zip(pass_.priors, latents, taus))
        return from_model_range(pass_.mean), log_p

    def sample(self, n: int, height: int, width: int, tau: TauSpec = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Decoder means of ancestral samples at temperature tau, [n, C, height, width] in [0, 1]."""
        pass_ = self.top_down(PriorSample(tau, self.num_groups, generator), n, height, width)
        return from_model_range(pass_.mean)

    def reconstruct(self, x: Tensor) -> Tensor:
        """G(z) with z the posterior means, top-down."""
        n, _, h, w = x.shape
        return from_model_range(self.top_down(PosteriorMean(), n, h, w, self.bottom_up(x)).mean)
