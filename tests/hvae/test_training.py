"""Training end to end: train.py smoke run, export, resume, DDP on 2 CPU processes, update skipping."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hvae.config import ConfigError
from hvae.export import export_prior, load_prior
from hvae.module import HVAEModule, OptimConfig, SpeedConfig

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "4",
        "--data.init_args.train_samples", "64", "--data.init_args.val_samples", "4",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=3"]


def _train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--trainer.default_root_dir", str(tmp_path), *FAST, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _version_dir(tmp_path: Path, version: int = 0) -> Path:
    return tmp_path / "lightning_logs" / f"version_{version}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    proc = _train(tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_train_py_writes_logs_checkpoint_and_export(trained):
    d = _version_dir(trained)
    assert (d / "checkpoints" / "last.ckpt").is_file()
    assert (d / "config.yaml").is_file() and list(d.glob("events.out.tfevents.*"))
    payload = torch.load(d / "prior.pt", weights_only=True)  # a plain-weights file
    assert payload["meta"]["global_step"] == 6
    assert payload["meta"]["trained_on"] == {"kind": "patches", "size": 32}  # configs/tiny.yaml's patches
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(d), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/bits_per_dim", "train/grad_norm", "train/skipped_total", "train/lr", "val/bits_per_dim",
            "kl/group_00"} <= tags
    assert {"val/input_vs_reconstruction", "samples/tau_0.80"} <= set(ea.Tags()["images"])
    # the pace, every batch here (log_every_n_steps 1) but the first and the first after validation (after step 3)
    pace = ea.Scalars("speed/images_per_s")
    assert [e.step for e in pace] == [2, 3, 5, 6] and all(e.value > 0 for e in pace)
    ms = [e.value for e in ea.Scalars("speed/ms_per_batch")]
    assert all(abs(4 * 1e3 / m - e.value) < 1e-3 * e.value for m, e in zip(ms, pace))  # batch 4: the same pace


def test_export_matches_checkpoint_ema(trained):
    d = _version_dir(trained)
    from_ckpt = load_prior(d / "checkpoints" / "last.ckpt")  # EMA weights in fp32, read with weights_only
    from_export = load_prior(d / "prior.pt")  # the same EMA weights rounded to fp16
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = from_ckpt.reconstruct(x), from_export.reconstruct(x)
    assert float((a - b).abs().max()) < 2e-2
    exact = d / "exact.pt"
    export_prior(from_ckpt, exact, half=False)
    with torch.no_grad():
        torch.testing.assert_close(load_prior(exact).reconstruct(x), a, rtol=0, atol=0)


def test_resume_continues_step_count(trained):
    ckpt = _version_dir(trained) / "checkpoints" / "last.ckpt"
    proc = _train(trained, "--ckpt_path", str(ckpt), "--trainer.max_steps", "9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = torch.load(_version_dir(trained, 1) / "prior.pt", weights_only=True)["meta"]
    assert meta["global_step"] == 9
    state = torch.load(_version_dir(trained, 1) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 9 and state["optimizer_states"][0]["state"]
    assert state["lr_schedulers"][0]["last_epoch"] == 9


@pytest.mark.parametrize("sync_free", [False, True])
def test_ddp_two_cpu_processes(tmp_path, sync_free):
    proc = _train(tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "4",
                  "--model.speed.sync_free", str(sync_free).lower(), "--trainer.log_every_n_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = torch.load(_version_dir(tmp_path) / "prior.pt", weights_only=True)["meta"]
    assert meta["global_step"] == 4 and meta["skipped_total"] == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(_version_dir(tmp_path)), size_guidance={"scalars": 0})
    ea.Reload()
    pace, ms = ea.Scalars("speed/images_per_s"), ea.Scalars("speed/ms_per_batch")
    assert pace and all(abs(p.value * m.value / 1e3 - 8) < 1e-3 for p, m in zip(pace, ms))  # 2 ranks x batch 4
    for tag in ("train/grad_norm", "train/skipped", "train/skipped_total", "train/lr", "kl/group_00"):
        assert [e.step for e in ea.Scalars(tag)] == [1, 3], tag  # logged every 2 steps, with the device's counters
    assert all(e.value > 0 for e in ea.Scalars("train/grad_norm"))
    assert all(e.value == 0 for e in ea.Scalars("train/skipped_total") + ea.Scalars("train/skipped"))


def test_bad_config_key_fails_with_a_message(tmp_path):
    proc = _train(tmp_path, "--model.arch.colour", "3")
    assert proc.returncode != 0 and "colour" in proc.stderr


class _Batches(torch.utils.data.Dataset):
    def __init__(self, n: int, nan_at: set[int]):
        self.n, self.nan_at = n, nan_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i))
        return x * float("nan") if i in self.nan_at else x


def _fit(tmp_path, module, n_batches, nan_at=(), log_every=50):
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        log_every_n_steps=log_every)
    trainer.fit(module, DataLoader(_Batches(n_batches, set(nan_at)), batch_size=1))
    return trainer


@pytest.mark.parametrize("sync_free", [False, True])
def test_nan_gradient_is_skipped_counted_and_training_goes_on(tmp_path, tiny_config, sync_free):
    module = HVAEModule(tiny_config, OptimConfig(warmup_steps=1), speed=SpeedConfig(sync_free=sync_free))
    trainer = _fit(tmp_path, module, 6, nan_at={2})
    # global_step counts applied updates with the host decision, batches with the device one
    assert module.skipped_total == 1 and trainer.global_step == (6 if sync_free else 5)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert all(torch.isfinite(p).all() for p in module.ema.parameters())


@pytest.mark.parametrize("sync_free", [False, True])
def test_too_low_threshold_cannot_stall_training(tmp_path, tiny_config, sync_free):
    optim = OptimConfig(warmup_steps=1, skip_threshold=1e-9, max_consecutive_skips=2)
    module = HVAEModule(tiny_config, optim, speed=SpeedConfig(sync_free=sync_free))
    trainer = _fit(tmp_path, module, 9)
    # every third update goes through
    assert trainer.global_step == (9 if sync_free else 3) and module.skipped_total == 6


def test_persistent_nan_stops_training_with_a_clear_error(tmp_path, tiny_config):
    module = HVAEModule(tiny_config, OptimConfig(warmup_steps=1, max_consecutive_skips=3))
    with pytest.raises(FloatingPointError, match="consecutive non-finite"):
        _fit(tmp_path, module, 6, nan_at={0, 1, 2, 3, 4, 5})


def test_sync_free_persistent_nan_stops_training_at_the_next_read(tmp_path, tiny_config):
    module = HVAEModule(tiny_config, OptimConfig(warmup_steps=1, max_consecutive_skips=3),
                        speed=SpeedConfig(sync_free=True))
    steps = []
    module.on_train_batch_end = lambda *a: steps.append(module.global_step)
    with pytest.raises(FloatingPointError, match="4 consecutive non-finite"):
        _fit(tmp_path, module, 12, nan_at=set(range(12)), log_every=4)
    assert steps == [1, 2, 3]  # read after the 4th batch (global_step 4): 4 non-finite in a row >= 3


def test_sync_free_logs_device_tensors_between_the_steps_lightning_writes(tmp_path, tiny_config):
    """Between two of Lightning's log writes a step logs no Python number (each would be copied to the GPU, which
    waits for it) and no progress-bar tensor of the device (Lightning turns those into numbers every batch)."""
    logged = []  # (batch, name, value, prog_bar)

    class Watched(HVAEModule):
        def log(self, name, value, *args, prog_bar=False, **kwargs):
            logged.append((self.trainer.fit_loop.epoch_loop._batches_that_stepped, name, value, prog_bar))
            super().log(name, value, *args, prog_bar=prog_bar, **kwargs)

    module = Watched(tiny_config, OptimConfig(warmup_steps=1), speed=SpeedConfig(sync_free=True))
    _fit(tmp_path, module, 7, log_every=3)
    written = {2, 5}  # Lightning writes after the 3rd and the 6th batch
    assert {b for b, *_ in logged} == set(range(7))
    for batch, name, value, prog_bar in logged:
        if batch not in written:
            assert isinstance(value, torch.Tensor) and not prog_bar, (batch, name)
    for batch in written:
        names = {name for b, name, *_ in logged if b == batch}
        assert {"train/lr", "train/skipped_total", "train/bpd", "kl/group_00", "train/grad_norm"} <= names
        assert [p for b, name, _, p in logged if b == batch and name == "train/bpd"] == [True]


def test_sync_free_refuses_a_gradient_scaler(tmp_path, tiny_config):
    from lightning.pytorch.plugins.precision import MixedPrecision
    module = HVAEModule(tiny_config, OptimConfig(), speed=SpeedConfig(sync_free=True))
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    with pytest.raises(ConfigError, match="16-mixed"):
        trainer.fit(module, DataLoader(_Batches(2, set()), batch_size=1))


def test_schedule_with_start_step_is_the_same_schedule_after_a_short_warm_up():
    base = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=100)
    warm = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=100, start_step=40)
    for step in (10, 11, 50, 200):
        assert warm.lr_factor(step) == pytest.approx(base.lr_factor(40 + step))
    assert warm.lr_factor(0) == pytest.approx(base.lr_factor(40) / 10)  # the fresh optimiser state warms up again
    assert warm.lr_factor(4) == pytest.approx(base.lr_factor(44) * 5 / 10)


def test_warm_start_loads_the_export_into_model_and_ema(trained):
    export = _version_dir(trained) / "prior.pt"
    prior = load_prior(export)
    module = HVAEModule(prior.config, init_from=str(export))
    want = prior.state_dict()
    for net in (module.model, module.ema):
        for k, v in net.state_dict().items():
            assert torch.equal(v, want[k]), k
    arch = prior.config
    with pytest.raises(ValueError, match="init_from .* another architecture"):
        HVAEModule(arch.__class__(**{**arch.__dict__, "latent_channels": arch.latent_channels + 1}),
                   init_from=str(export))


def test_train_py_warm_start_goes_on_along_the_schedule(trained, tmp_path):
    export = _version_dir(trained) / "prior.pt"
    start = torch.load(export, weights_only=True)["meta"]["global_step"]
    proc = _train(tmp_path, "--model.init_from", str(export), "--model.optim.start_step", str(start),
                  "--trainer.max_steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(_version_dir(tmp_path) / "prior.pt", weights_only=True)["meta"]["global_step"] == start + 3
    state = torch.load(_version_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    cfg = state["optim_config"]
    optim = OptimConfig(**{**cfg, "betas": tuple(cfg["betas"])})
    assert optim.start_step == start > 0
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(optim.lr * optim.lr_factor(3))
