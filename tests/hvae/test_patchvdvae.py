"""The like-for-like preset configs/patchvdvae.yaml against the published PnP-HVAE natural-image network,
and the architecture options it uses (encoder_widths, downsample, upsample, activation)."""

from pathlib import Path

import pytest
import torch
import yaml

from hvae.config import ConfigError, HVAEConfig
from hvae.cost import meta_model, parameter_count, training_step_flops, zstep_flops
from hvae.model import HierarchicalVAE

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "patchvdvae.yaml"
# Published figures (issue 7, ../shared/DESIGN.md): "about 14.8 M parameters and 5.63 MFLOP per pixel per
# z-step", FLOPs at 2 per multiply-add (FlopCounterMode's convention).
PUBLISHED_PARAMS = 14.8e6
PUBLISHED_MFLOP_PER_PIXEL = 5.63


def _preset() -> HVAEConfig:
    return HVAEConfig.from_dict(yaml.safe_load(PRESET.read_text())["model"]["arch"])


def test_preset_matches_published_parameter_and_flop_counts():
    config = _preset()
    assert config.num_groups == 36 and config.multiple == 64 and config.latent_channels == 16
    params = parameter_count(meta_model(config))
    assert abs(params / PUBLISHED_PARAMS - 1) < 0.03, params
    flops = zstep_flops(config, 64, 64)
    mflop_per_pixel = flops / (64 * 64) / 1e6
    assert abs(mflop_per_pixel / PUBLISHED_MFLOP_PER_PIXEL - 1) < 0.10, mflop_per_pixel
    # fully convolutional: the cost per pixel is the same at another size and batch
    assert zstep_flops(config, 128, 192, batch=2) == pytest.approx(flops * 2 * 128 * 192 / 4096, rel=1e-9)


def test_training_step_costs_about_three_forward_passes():
    config = _preset()
    fwd = zstep_flops(config, 64, 64)
    train = training_step_flops(config, 64, 64)
    assert 2.5 * fwd < train < 3.5 * fwd


OPTIONS = HVAEConfig(image_channels=3, stem_channels=8, widths=(12, 16, 16), encoder_widths=(8, 12, 16),
                     strides=(2, 2, 1), encoder_blocks=(1, 1, 1), latent_groups=(2, 1, 1), kernel_sizes=(3, 3, 1),
                     skip_channels=4, latent_channels=3, downsample="conv", upsample="conv_nearest",
                     activation="silu")


def test_options_build_the_published_layout():
    torch.manual_seed(0)
    model = HierarchicalVAE(OPTIONS).eval()
    assert [type(d).__name__ for d in model.downsamplers] == ["Conv2d", "Conv2d", "Identity"]
    assert model.downsamplers[0].weight.shape == (12, 8, 2, 2)  # strided conv to the next encoder width
    assert all(isinstance(p, torch.nn.Conv2d) for p in model.level_proj)  # 1x1 conv even at equal widths
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        acts = model.bottom_up(x)
        assert [tuple(a.shape[1:]) for a in acts] == [(4, 16, 24), (4, 8, 12), (4, 4, 6)]
        latents, decoded = model.encode_decode(x, 0.8)
        torch.testing.assert_close(model.decode(latents), decoded)
    assert decoded.shape == x.shape and len(latents) == 4
    assert torch.isfinite(model.elbo(x).loss)


def test_conv_nearest_is_the_same_map_as_projecting_after_upsampling():
    torch.manual_seed(0)
    model = HierarchicalVAE(OPTIONS).eval()
    state = torch.randn(1, 16, 4, 6)
    up = model._up(state, 0)
    ref = model.level_proj[0](torch.nn.functional.interpolate(state, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(up, ref)
    assert up.shape == (1, 12, 8, 12)


def test_activation_option_changes_the_function():
    torch.manual_seed(0)
    silu = HierarchicalVAE(OPTIONS).eval()
    gelu = HierarchicalVAE(HVAEConfig.from_dict({**OPTIONS.to_dict(), "activation": "gelu"})).eval()
    gelu.load_state_dict(silu.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(silu.encode_decode(x, 0.9)[1], gelu.encode_decode(x, 0.9)[1])


def test_new_fields_round_trip_and_are_checked():
    assert HVAEConfig.from_dict(OPTIONS.to_dict()) == OPTIONS
    old = {k: v for k, v in HVAEConfig().to_dict().items()
           if k not in ("encoder_widths", "downsample", "upsample", "activation")}
    assert HVAEConfig.from_dict(old) == HVAEConfig()  # configs written before the options load unchanged
    for bad in ({"encoder_widths": (8, 8)}, {"downsample": "max"}, {"upsample": "bilinear"}, {"activation": "relu"}):
        with pytest.raises(ConfigError):
            HVAEConfig(**bad)


def test_zstep_operator_counts_of_the_preset_plain_and_fused():
    """What one z-step dispatches (the eager path's kernels): the fused nets take 3 convolutions off each of
    the 35 groups with a learned prior (8 -> 5: the state increment has its own 1x1), for the multiply-adds of
    their zero blocks."""
    from hvae.cost import zstep_op_counts
    config = _preset()
    plain, fused = zstep_op_counts(config, 64, 64), zstep_op_counts(config, 64, 64, fused=True)
    assert plain["convolutions"] == 602 and fused["convolutions"] == 602 - 3 * 35
    assert fused["operators"] < plain["operators"] - 3 * 35
    assert plain["flops"] == zstep_flops(config, 64, 64) < fused["flops"] < 1.1 * plain["flops"]
    # no KL in the z-step (only the ELBO keeps it), and no arithmetic for the tempered mode at tau = 1
    assert zstep_op_counts(config, 64, 64, tau=1.0)["operators"] < plain["operators"] < 1800


def test_zstep_traffic_counts_match_the_convolutions_own():
    """conv_elements is each convolution's input and output (counted here again with forward hooks), grows with
    the pixels, and the fused nets read the state once where the two nets read it twice."""
    from hvae.cost import zstep_op_counts
    config = _preset()
    counts = zstep_op_counts(config, 64, 64)
    model, seen = meta_model(config), []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, args, out: seen.append(args[0].numel() + out.numel()))
    with torch.no_grad():
        model.encode_decode(torch.zeros(1, 3, 64, 64, device="meta"), 0.8)
    assert len(seen) == counts["convolutions"] and sum(seen) == counts["conv_elements"]
    assert zstep_op_counts(config, 128, 128)["conv_elements"] == 4 * counts["conv_elements"]
    assert 0 < counts["elementwise_elements"]
    assert zstep_op_counts(config, 64, 64, fused=True)["conv_elements"] < counts["conv_elements"]
