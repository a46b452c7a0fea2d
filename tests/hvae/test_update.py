"""hvae.update: the update decided on the device (SpeedConfig.sync_free) against the host decision."""

import pytest
import torch

from hvae.module import HVAEModule, OptimConfig, SpeedConfig
from hvae.update import zero_unless


def test_zero_unless_keeps_or_zeroes_every_value_nan_and_inf_included():
    plain = torch.tensor([[1.0, float("nan")], [float("inf"), -2.0]])
    nhwc = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    nhwc[0, 1, 2, 3] = float("-inf")
    scalar = torch.tensor(float("nan"))
    tensors = [plain, nhwc, scalar]
    kept = [t.clone() for t in tensors]
    zero_unless(torch.tensor(True), tensors)
    assert all(torch.equal(a, b) or (a.isnan() == b.isnan()).all() for a, b in zip(tensors, kept))
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(tensors, kept))
    zero_unless(torch.tensor(False), tensors)
    assert all((t == 0).all() for t in tensors)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)  # written in place, layout kept


def _module(tiny_config, sync_free: bool, **optim) -> tuple[HVAEModule, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    module = HVAEModule(tiny_config, OptimConfig(optimizer=optim.pop("optimizer", "adamax"), warmup_steps=0,
                                                 min_lr=1e-3, **optim),
                        speed=SpeedConfig(sync_free=sync_free))
    cfg = module.configure_optimizers()
    return module, cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]


def _step(module, opt, sched, x, scale=1.0):
    opt.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the ELBO's posterior samples
    (module.model.elbo(x).loss * scale).backward()
    return module.apply_update(opt, sched)


def _state(module, opt):
    moments = [v.clone() for p in module.model.parameters() for k, v in opt.state.get(p, {}).items() if k != "step"]
    return ([p.detach().clone() for p in module.model.parameters()], moments,
            [p.detach().clone() for p in module.ema.parameters()])


@pytest.mark.parametrize("optimizer", ["adamax", "adamw"])
def test_without_skips_the_device_decision_is_the_host_one(tiny_config, optimizer):
    host, device = _module(tiny_config, False, optimizer=optimizer), _module(tiny_config, True, optimizer=optimizer)
    for i in range(4):
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i))
        norm_h, skip_h = _step(*host, x)
        norm_d, skip_d = _step(*device, x)
        assert torch.is_tensor(norm_d) and norm_d.item() == pytest.approx(norm_h, rel=1e-6) and not skip_d and not skip_h
    for a, b in zip(_state(host[0], host[1]), _state(device[0], device[1])):
        assert len(a) == len(b) and all(torch.allclose(u, v, rtol=1e-5, atol=1e-7) for u, v in zip(a, b))


@pytest.mark.parametrize("bad", ["nan", "too_large"])
def test_a_skipped_update_leaves_weights_moments_and_ema_exactly_as_they_were(tiny_config, bad):
    module, opt, sched = _module(tiny_config, True, skip_threshold=50.0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    _step(module, opt, sched, x)  # the moments exist from here on
    before = _state(module, opt)
    norm, skipped = _step(module, opt, sched, x, scale=float("nan") if bad == "nan" else 1e6)
    assert bool(skipped) and (norm.isnan() if bad == "nan" else norm > 50)
    after = _state(module, opt)
    for a, b in zip(before, after):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert module._device_update.counts() == (1, 1, 1 if bad == "nan" else 0)


def test_a_skipped_first_update_leaves_the_moments_at_zero(tiny_config):
    module, opt, sched = _module(tiny_config, True)
    before = [p.detach().clone() for p in module.model.parameters()]
    x = torch.rand(2, 3, 16, 16)
    _step(module, opt, sched, x, scale=float("inf"))
    assert all(torch.equal(a, p) for a, p in zip(before, module.model.parameters()))
    moments = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    assert moments and all((v == 0).all() for v in moments)


def test_counters_follow_the_host_rule_through_forced_and_nonfinite_skips(tiny_config):
    """skip_threshold below every norm, two skips in a row at most: skip, skip, forced apply, ...; a NaN in between."""
    kw = dict(skip_threshold=1e-9, max_consecutive_skips=2)
    host, device = _module(tiny_config, False, **kw), _module(tiny_config, True, **kw)
    scales = [1, 1, 1, float("nan"), 1, 1, 1]
    for i, scale in enumerate(scales):
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i))
        _, skip_h = _step(*host, x, scale)
        _, skip_d = _step(*device, x, scale)
        assert bool(skip_d) == skip_h, i
        counts = device[0]._device_update.counts()
        assert counts == (host[0].skipped_total, host[0].consecutive_skips, host[0].consecutive_nonfinite), i


def test_update_reads_nothing_back_from_the_device(tiny_config, monkeypatch):
    """No tensor is turned into a Python number by the update or by a training step's logging between reads
    (on a GPU each such read waits for the queue; tests/hvae/test_update.py's CUDA test checks the same there)."""
    module, opt, sched = _module(tiny_config, True)
    x = torch.rand(2, 3, 16, 16)
    _step(module, opt, sched, x)
    host_side = {id(s["step"]) for s in opt.state.values()}  # Adamax's step counts live on the host anyway
    reads = []

    def spy(name, original):
        def read(self, *args, **kwargs):
            if id(self) not in host_side:
                reads.append(name)
            return original(self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    for _ in range(3):
        _step(module, opt, sched, x)
    monkeypatch.undo()
    assert reads == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sync_free_training_step_does_not_synchronise_on_cuda(tiny_config):
    module, opt, sched = _module(tiny_config, True)
    module.cuda()
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    x = torch.rand(2, 3, 16, 16, device="cuda")
    _step(module, opt, sched, x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            _step(module, opt, sched, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert module._device_update.counts() == (0, 0, 0)
