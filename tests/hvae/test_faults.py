"""Training faults: a run killed with SIGKILL resumes exactly; checkpoints and exports are written atomically;
a checkpoint of another architecture is refused on resume. (NaN gradients: tests/hvae/test_training.py.)"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from data.images import write_image
from hvae.config import ConfigError, HVAEConfig
from hvae.export import atomic_torch_save, export_prior
from hvae.module import AtomicCheckpointIO, HVAEModule, OptimConfig, use_atomic_checkpoints

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_EVERY = 4  # training steps between checkpoints of the killed run
STEPS_AFTER_RESUME = 2  # the resumed run stops itself this many steps after its start
KILL_DELAY_MAX_S = 1.0  # the kill comes at a random moment this long after the first checkpoint appears

# a callback for the resumed run: records the state Lightning restored, before any new step changes it
PROBE = '''
import torch
import lightning as L


class Probe(L.Callback):
    def __init__(self, path: str, steps: int) -> None:
        self.path, self.steps, self.start = path, steps, None

    def on_train_start(self, trainer, module) -> None:
        self.start = trainer.global_step
        torch.save({"global_step": trainer.global_step,
                    "optimizer": trainer.optimizers[0].state_dict(),
                    "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
                    "model": module.model.state_dict(), "ema": module.ema.state_dict(),
                    "counters": {"skipped_total": module.skipped_total,
                                 "consecutive_skips": module.consecutive_skips,
                                 "consecutive_nonfinite": module.consecutive_nonfinite},
                    "checkpoint_io": type(trainer.strategy.checkpoint_io).__name__}, self.path)

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.start + self.steps:
            trainer.should_stop = True
'''


def _env(extra_path: Path | None = None) -> dict[str, str]:
    # one thread: on a CPU shared with other jobs, spinning OpenMP threads slow tiny models down a hundredfold
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return env


def _image_folder(root: Path) -> Path:
    for i in range(4):
        write_image(root / f"img{i}.png", torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(i)))
    return root


def _train_command(run_dir: Path, images: Path) -> list[str]:
    """A long tiny-model run (it never ends by itself within the test), checkpointing every few steps."""
    return [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
            "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", "100000",
            "--trainer.val_check_interval", "100000", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
            f"--trainer.callbacks.every_n_train_steps={CHECKPOINT_EVERY}",
            "--data.init_args.root", str(images), "--data.init_args.batch_size", "2",
            "--data.init_args.patch_size", "16", "--data.init_args.train_samples", "100000",
            "--data.init_args.val_samples", "2"]


def _kill_after_first_checkpoint(cmd: list[str], ckpt: Path, delay_s: float, timeout_s: float, log: Path) -> int:
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout_s
    try:
        while not ckpt.is_file():
            if proc.poll() is not None:
                raise AssertionError(f"training ended before its first checkpoint: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint within the time limit")
            time.sleep(0.05)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Nested equality of state dicts: tensors bit for bit, everything else with ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_sigkill_at_a_random_step_resumes_with_the_same_state(tmp_path):
    images = _image_folder(tmp_path / "images")
    cmd = _train_command(tmp_path / "run", images)
    ckpt = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    delay = random.Random(os.getpid()).uniform(0, KILL_DELAY_MAX_S)
    code = _kill_after_first_checkpoint(cmd, ckpt, delay, timeout_s=240, log=tmp_path / "killed.log")
    assert code == -signal.SIGKILL, f"the run was not killed (exit code {code}): {(tmp_path / 'killed.log').read_text()[-2000:]}"

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)  # whole, despite the kill
    step = saved["global_step"]
    assert step >= CHECKPOINT_EVERY and step % CHECKPOINT_EVERY == 0

    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "resume_probe.py").write_text(textwrap.dedent(PROBE))
    snapshot = tmp_path / "restored_state.pt"
    resume = [*cmd, "--ckpt_path", str(ckpt), "--trainer.callbacks+=resume_probe.Probe",
              f"--trainer.callbacks.path={snapshot}", f"--trainer.callbacks.steps={STEPS_AFTER_RESUME}"]
    proc = subprocess.run(resume, cwd=ROOT, env=_env(tmp_path / "probe"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    restored = torch.load(snapshot, map_location="cpu", weights_only=True)
    assert restored["checkpoint_io"] == AtomicCheckpointIO.__name__
    assert restored["global_step"] == step
    _assert_same(restored["optimizer"], saved["optimizer_states"][0], "optimizer")
    _assert_same(restored["scheduler"], saved["lr_schedulers"][0], "lr schedule")
    _assert_same(restored["model"], _prefixed(saved["state_dict"], "model."), "model")
    _assert_same(restored["ema"], _prefixed(saved["state_dict"], "ema."), "ema")
    _assert_same(restored["counters"], saved["update_counters"], "update counters")
    resumed_export = tmp_path / "run" / "lightning_logs" / "version_1" / "prior.pt"
    assert torch.load(resumed_export, weights_only=True)["meta"]["global_step"] == step + STEPS_AFTER_RESUME


# ------------------------------------------------------------------------------------------- atomic writes
def _crash_midway(obj: Any, f, *args, **kwargs) -> None:
    """Stands in for torch.save killed half-way: some bytes reach the file, then the write dies."""
    handle = f if hasattr(f, "write") else open(f, "wb")
    handle.write(b"PK\x03\x04 half a checkpoint")
    handle.flush()
    raise KeyboardInterrupt("killed during the save")


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_interrupted_during_save_keeps_the_previous_file(tmp_path, monkeypatch, tiny_model):
    path = export_prior(tiny_model, tmp_path / "prior.pt")
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _crash_midway)
    with pytest.raises(KeyboardInterrupt):
        export_prior(tiny_model, path, half=False)
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["prior.pt"]  # no temporary file left behind


def test_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_torch_save({"step": 1}, path)
    before = path.read_bytes()

    def no_rename(src, dst):
        raise OSError("disk gone during the rename")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="rename"):
        atomic_torch_save({"step": 2}, path)
    assert path.read_bytes() == before and _files(tmp_path) == ["state.pt"]


def test_lightning_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.ones(2)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _crash_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 4, "w": torch.zeros(2)}, path)
    assert path.read_bytes() == before and _files(path.parent) == ["last.ckpt"]
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 3


@pytest.mark.parametrize("writer", [TorchCheckpointIO, AtomicCheckpointIO])
def test_checkpoint_killed_while_crossing_file_systems(tmp_path, monkeypatch, writer):
    """Lightning's own writer stages the checkpoint in the system temp folder and moves it: when that folder is on
    another file system the move is a copy into last.ckpt, and a kill during the copy truncates last.ckpt
    (simulated: the rename fails with EXDEV, the copy dies half-way). Ours renames inside the destination folder."""
    path = tmp_path / "last.ckpt"
    writer().save_checkpoint({"global_step": 3, "w": torch.ones(1000)}, path)

    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copy_killed_halfway(src, dst, *args, **kwargs):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed during the copy")

    monkeypatch.setattr(os, "rename", cross_device)
    monkeypatch.setattr(shutil, "copyfile", copy_killed_halfway)
    try:
        writer().save_checkpoint({"global_step": 4, "w": torch.zeros(1000)}, path)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    if writer is TorchCheckpointIO:  # the premise: why train.py swaps the writer
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)
        return
    assert torch.load(path, weights_only=True)["global_step"] == 4 and _files(tmp_path) == ["last.ckpt"]


def test_trainer_uses_the_atomic_writer_unless_one_is_given(tmp_path):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    use_atomic_checkpoints(trainer)
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO

    class Custom(AtomicCheckpointIO):
        pass

    custom = L.Trainer(accelerator="cpu", logger=False, plugins=[Custom()], default_root_dir=tmp_path)
    use_atomic_checkpoints(custom)
    assert type(custom.strategy.checkpoint_io) is Custom


def test_resume_refuses_a_checkpoint_of_another_architecture(tiny_config):
    module = HVAEModule(tiny_config, OptimConfig())
    other = HVAEConfig(**{**tiny_config.to_dict(), "latent_channels": tiny_config.latent_channels + 1})
    with pytest.raises(ConfigError, match="another architecture"):
        module.on_load_checkpoint({"hvae_config": other.to_dict()})

