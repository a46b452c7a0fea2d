"""Training speed options (hvae.module.SpeedConfig): channels_last, compile, fused/foreach optimiser, EMA kernel."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hvae.config import ConfigError
from hvae.module import HVAEModule, OptimConfig, SpeedConfig


def _batch(n=2, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_channels_last_module_trains_on_cpu(tmp_path, tiny_config):
    module = HVAEModule(tiny_config, OptimConfig(warmup_steps=1), speed=SpeedConfig(channels_last=True))
    before = [p.detach().clone() for p in module.ema.parameters()]
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader([_batch(1, seed=i)[0] for i in range(3)], batch_size=1))
    assert trainer.global_step == 3 and module.skipped_total == 0
    conv = module.model.stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.ema.parameters()))  # the EMA moved


def test_bf16_mixed_channels_last_trains_on_cpu(tmp_path, tiny_config):
    """The CPU fast path (BENCHMARKS.md, CPU): Lightning's bf16-mixed autocast on the CPU, fp32 weights kept."""
    module = HVAEModule(tiny_config, OptimConfig(warmup_steps=1), speed=SpeedConfig(channels_last=True))
    before = [p.detach().clone() for p in module.model.parameters()]
    dtypes = []
    module.model.stem.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, DataLoader([_batch(1, seed=i)[0] for i in range(3)], batch_size=1))
    assert trainer.global_step == 3 and module.skipped_total == 0
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the convolutions ran in bf16
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in module.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()))  # it trained


def test_channels_last_elbo_equals_the_plain_one(tiny_config):
    torch.manual_seed(0)
    module = HVAEModule(tiny_config, speed=SpeedConfig(channels_last=True))
    x = _batch()
    torch.manual_seed(1)
    plain = module.model.elbo(x).nats_per_dim
    module.setup("fit")
    torch.manual_seed(1)
    fast = module._elbo(x).nats_per_dim
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_ema_update_is_the_lerp_of_every_parameter(tiny_config):
    module = HVAEModule(tiny_config, OptimConfig(ema_decay=0.9))
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    old = [p.detach().clone() for p in module.ema.parameters()]
    module.update_ema()
    for e, o, m in zip(module.ema.parameters(), old, module.model.parameters()):
        torch.testing.assert_close(e, o + 0.1 * (m.detach() - o))


def test_optimizer_kernel_choice_on_cpu(tiny_config):
    for name in ("adamax", "adamw"):
        module = HVAEModule(tiny_config, OptimConfig(optimizer=name))
        opt = module.configure_optimizers()["optimizer"]
        assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")  # no fused kernel for CPU tensors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled training is tested on CUDA (inductor is slow on CPU)")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_channels_last_bf16_step_on_cuda(tiny_config, mode):
    module = HVAEModule(tiny_config, OptimConfig(optimizer="adamw"),
                        speed=SpeedConfig(channels_last=True, compile=True, compile_mode=mode)).cuda()
    module.setup("fit")
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True
    losses = []
    for step in range(4):  # with CUDA graphs: warm-up, recording, then replays of the recorded graphs
        x = _batch(4, 32, seed=step).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module._elbo(x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in module.model.parameters()
                                                if p.grad is not None)
        losses.append(float(out.loss))
        opt.step()
    assert len(set(losses)) == 4  # each step saw its own batch and the updated weights


def test_bad_compile_mode_is_refused():
    with pytest.raises(ConfigError, match="compile_mode"):
        SpeedConfig(compile_mode="turbo")
