import math

import pytest
import torch
from torch import distributions as D

from hvae.config import ConfigError, HVAEConfig
from hvae.distributions import DiagonalGaussian, kl_divergence, tempered_mode
from hvae.latent_rules import PosteriorMean, linear_tau
from hvae.model import HierarchicalVAE


def _gaussians(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = DiagonalGaussian(torch.randn(shape, generator=g, dtype=torch.float64),
                         0.5 * torch.randn(shape, generator=g, dtype=torch.float64))
    p = DiagonalGaussian(torch.randn(shape, generator=g, dtype=torch.float64),
                         0.5 * torch.randn(shape, generator=g, dtype=torch.float64))
    return q, p


def test_kl_matches_torch_distributions():
    q, p = _gaussians((2, 3, 4, 5))
    ref = D.kl_divergence(D.Normal(q.mean, q.log_std.exp()), D.Normal(p.mean, p.log_std.exp()))
    torch.testing.assert_close(kl_divergence(q, p), ref)


def test_log_prob_matches_torch_distributions():
    q, _ = _gaussians((4, 7))
    z = torch.randn(4, 7, dtype=torch.float64)
    ref = D.Normal(q.mean, 0.7 * q.log_std.exp()).log_prob(z)
    torch.testing.assert_close(q.log_prob(z, 0.7), ref)


@pytest.mark.parametrize("tau", [1.0, 0.9, 0.6, 0.3, 0.05])
def test_tempered_mode_maximises_tempered_density(tau):
    q, p = _gaussians((64,), seed=1)
    mode = tempered_mode(q, p, tau)
    # brute force: maximise log q + (1/tau^2 - 1) log p by gradient ascent from another point
    z = torch.zeros(64, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([z], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(q.log_prob(z) + (1 / tau**2 - 1) * p.log_prob(z)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(mode, z.detach(), atol=1e-6, rtol=1e-6)
    objective = lambda v: (q.log_prob(v) + (1 / tau**2 - 1) * p.log_prob(v)).sum()  # noqa: E731
    assert objective(mode) >= objective(mode + 1e-3) and objective(mode) >= objective(mode - 1e-3)


def test_tempered_mode_limits():
    q, p = _gaussians((100,), seed=2)
    torch.testing.assert_close(tempered_mode(q, p, 1.0), q.mean)
    torch.testing.assert_close(tempered_mode(q, p, 1e-6), p.mean, atol=1e-8, rtol=1e-6)
    with pytest.raises(ValueError):
        tempered_mode(q, p, 1.5)


def test_encode_tau_one_is_posterior_mean_and_small_tau_tracks_prior(tiny_model):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z1 = tiny_model.encode(x, 1.0)
        acts = tiny_model.bottom_up(x)
        ref = tiny_model.top_down(PosteriorMean(), 2, 16, 16, acts, keep_priors=True)
        for a, b in zip(z1, ref.latents):
            torch.testing.assert_close(a, b)
        # tau -> 0: every latent equals the prior mean given the latents above it
        z0 = tiny_model.encode(x, 1e-6)
        priors = tiny_model.top_down(PosteriorMean(), 2, 16, 16, acts, keep_priors=True)
        dec = tiny_model.top_down(__import__("hvae.latent_rules", fromlist=["GivenLatents"]).GivenLatents(z0),
                                  2, 16, 16, keep_priors=True)
        for z, prior in zip(z0, dec.priors):
            torch.testing.assert_close(z, prior.mean, atol=1e-4, rtol=1e-4)
        assert priors.priors[0].mean.abs().max() == 0  # the top prior is N(0, I)


def test_per_group_tau_and_linear_schedule(tiny_model):
    taus = linear_tau(0.9, 0.5, tiny_model.num_groups)
    assert taus[0] == 0.9 and abs(taus[-1] - 0.5) < 1e-12 and len(taus) == 4
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        z = tiny_model.encode(x, taus)
    assert len(z) == 4
    with pytest.raises(ValueError, match="latent groups"):
        tiny_model.encode(x, [0.5, 0.5])


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (128, 128)])
def test_fully_convolutional_any_size(tiny_model, size):
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = tiny_model.elbo(x)
        assert out.reconstruction.shape == x.shape
        assert tiny_model.sample(2, *size, tau=0.8).shape == (2, 3, *size)
        latents, decoded = tiny_model.encode_decode(x, 0.7)
        torch.testing.assert_close(tiny_model.decode(latents), decoded)
    assert latents[0].shape[-2:] == (size[0] // 4, size[1] // 4)


def test_bad_size_is_refused(tiny_model):
    with pytest.raises(ValueError, match="multiple"):
        tiny_model.elbo(torch.rand(1, 3, 30, 32))


def test_elbo_terms_consistent(tiny_model):
    x = torch.rand(3, 3, 16, 16)
    out = tiny_model.elbo(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.nats_per_dim, out.recon_per_dim + out.kl_per_group.sum(1))
    torch.testing.assert_close(out.bits_per_dim, out.nats_per_dim / math.log(2))
    assert out.kl_per_group.shape == (3, 4) and bool((out.kl_per_group >= -1e-6).all())


def test_tiny_model_overfits_a_few_images(tiny_config):
    torch.manual_seed(0)
    model = HierarchicalVAE(tiny_config)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=16, mode="bilinear")
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model.elbo(x).loss
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(model.elbo(x, generator=torch.Generator().manual_seed(1)).loss)
    assert last < first - 1.0 and last < 0.6 * first, (first, last)


def test_config_round_trip_and_errors(tiny_config):
    assert HVAEConfig.from_dict(tiny_config.to_dict()) == tiny_config
    with pytest.raises(ConfigError, match="unknown"):
        HVAEConfig.from_dict({**tiny_config.to_dict(), "colour": 3})
    with pytest.raises(ConfigError, match="must be int"):
        HVAEConfig.from_dict({**tiny_config.to_dict(), "latent_channels": "8"})
    with pytest.raises(ConfigError, match="one value per level"):
        HVAEConfig(widths=(8, 8), strides=(2, 2, 1))


def test_top_down_keeps_the_kl_only_when_asked(tiny_model):
    from hvae.latent_rules import TemperedMode
    x = torch.rand(1, 3, 16, 16)
    acts = tiny_model.bottom_up(x)
    with torch.no_grad():
        plain = tiny_model.top_down(TemperedMode(0.8, tiny_model.num_groups), 1, 16, 16, acts)
        kept = tiny_model.top_down(TemperedMode(0.8, tiny_model.num_groups), 1, 16, 16, acts, keep_kl=True)
    assert plain.kl == [] and len(kept.kl) == tiny_model.num_groups
    torch.testing.assert_close(plain.mean, kept.mean)


def test_decoder_mean_is_computed_in_fp32_under_bf16_autocast(busy_tiny_model):
    """Under bf16 autocast every convolution but the output one runs in bf16; the mean is not rounded to bf16."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    last = {}
    hook = busy_tiny_model.out.register_forward_pre_hook(lambda module, args: last.update(state=args[0]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, decoded = busy_tiny_model.encode_decode(x, 0.8)
    hook.remove()
    assert decoded.dtype == torch.float32
    assert not torch.equal(decoded, decoded.bfloat16().float())  # bf16-rounded values would all be representable
    expected = torch.nn.functional.conv2d(last["state"].float(), busy_tiny_model.out.weight, busy_tiny_model.out.bias)
    torch.testing.assert_close(decoded, (expected + 1) / 2)  # from_model_range: [-1, 1] -> [0, 1]
