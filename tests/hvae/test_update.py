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
    for a, b in zip(tensors, kept):  # kept: the same values, NaN where NaN was
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
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
    """Weights, the optimiser's state (moments and step counts) and the EMA."""
    optimizer_state = [v.clone() for p in module.model.parameters() for v in opt.state.get(p, {}).values()]
    return ([p.detach().clone() for p in module.model.parameters()], optimizer_state,
            [p.detach().clone() for p in module.ema.parameters()])


def _assert_close(a, b):
    for u, v in zip(a, b):
        assert len(u) == len(v) and all(torch.allclose(s, t, rtol=1e-5, atol=1e-7) for s, t in zip(u, v))


@pytest.mark.parametrize("optimizer", ["adamax", "adamw"])
def test_without_skips_the_device_decision_is_the_host_one(tiny_config, optimizer):
    host, device = _module(tiny_config, False, optimizer=optimizer), _module(tiny_config, True, optimizer=optimizer)
    for i in range(4):
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i))
        norm_h, skip_h = _step(*host, x)
        norm_d, skip_d = _step(*device, x)
        assert torch.is_tensor(norm_d) and norm_d.item() == pytest.approx(norm_h, rel=1e-6)
        assert not skip_d and not skip_h
    _assert_close(_state(host[0], host[1]), _state(device[0], device[1]))


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
    state = [v for s in opt.state.values() for v in s.values()]  # moments and step counts
    assert state and all((v == 0).all() for v in state)


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
    # a constant lr here: then only the schedule's count tells the two apart, so the states agree, step counts too
    _assert_close(_state(host[0], host[1]), _state(device[0], device[1]))


def test_update_reads_nothing_back_from_the_device(tiny_config, monkeypatch):
    """No tensor is turned into a Python number by the update (on a GPU each such read waits for the queue; the
    CUDA test below checks the same there)."""
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


def test_checkpoints_carry_the_device_counters(tiny_config):
    module, opt, sched = _module(tiny_config, True)
    x = torch.rand(2, 3, 16, 16)
    for scale in (1.0, float("nan"), 1.0, float("nan")):
        _step(module, opt, sched, x, scale)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)  # reads the device's counters
    assert checkpoint["update_counters"] == {"skipped_total": 2, "consecutive_skips": 1, "consecutive_nonfinite": 1}
    module.on_load_checkpoint({"update_counters": {"skipped_total": 7, "consecutive_skips": 0,
                                                   "consecutive_nonfinite": 0}})
    _step(module, opt, sched, x, float("nan"))  # counts on from the loaded counters
    module.read_update_counters(check=False)
    assert (module.skipped_total, module.consecutive_skips, module.consecutive_nonfinite) == (8, 1, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("optimizer", ["adamax", "adamw"])
def test_sync_free_update_does_not_synchronise_on_cuda(tiny_config, optimizer):
    module = _module(tiny_config, True, optimizer=optimizer)[0].cuda()
    optimizers = module.configure_optimizers()  # on the device now: capturable Adamax, fused AdamW
    opt, sched = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    assert opt.param_groups[0].get("fused") or opt.param_groups[0].get("capturable")
    x = torch.rand(2, 3, 16, 16, device="cuda")
    for scale in (1.0, 1.0, float("nan"), 1.0):
        opt.zero_grad(set_to_none=True)
        (module.model.elbo(x).loss * scale).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
        try:
            module.apply_update(opt, sched)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert module._device_update.counts() == (1, 0, 0)
    steps = {float(s["step"]) for s in opt.state.values()}
    assert steps == {3.0}  # the skipped update's step count undone on the device
