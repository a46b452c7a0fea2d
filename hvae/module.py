"""LightningModule: ELBO training with warm-up + cosine schedule, clipping, robust update skipping and EMA."""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from .config import ConfigError, HVAEConfig
from .export import atomic_torch_save, export_prior, unreadable_checkpoint
from .model import HierarchicalVAE
from .update import DeviceUpdate


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and update-safety settings.

    An update is skipped when its gradient norm is not finite, or above ``skip_threshold`` (0: never
    for finite norms). So that training cannot stall when the threshold is simply too low (vdvae #25),
    after ``max_consecutive_skips`` skipped finite updates in a row the next one is applied (clipped);
    that many non-finite gradients in a row stop training with an error instead of looping forever.
    """

    optimizer: str = "adamax"  # "adamax" or "adamw"
    lr: float = 1e-3
    min_lr: float = 2e-4  # end of the cosine decay
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    decay_steps: int = 100_000  # length of the cosine decay after warm-up
    grad_clip: float = 200.0  # clip the total gradient norm to this (0: off)
    skip_threshold: float = 400.0
    max_consecutive_skips: int = 50
    ema_decay: float = 0.999
    start_step: int = 0  # the schedule's step at this run's first update (a warm start, see HVAEModule.init_from)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamax", "adamw"):
            raise ConfigError(f"optimizer must be 'adamax' or 'adamw', got {self.optimizer!r}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_consecutive_skips < 1 or self.warmup_steps < 0 or self.decay_steps < 1:
            raise ConfigError("max_consecutive_skips and decay_steps must be >= 1, warmup_steps >= 0")
        if self.start_step < 0:
            raise ConfigError(f"start_step must be >= 0, got {self.start_step}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at this run's optimiser step ``step``: linear warm-up, then cosine to min_lr,
        on the schedule's step ``start_step + step``. A warm start (start_step > 0) warms its fresh optimiser
        state up again: the factor ramps linearly over its first ``warmup_steps`` steps."""
        total = self.start_step + step
        if total < self.warmup_steps:
            return (total + 1) / self.warmup_steps
        t = min(1.0, (total - self.warmup_steps) / self.decay_steps)
        floor = self.min_lr / self.lr
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if self.start_step > 0 and step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor


@dataclass(frozen=True)
class SpeedConfig:
    """Throughput settings of training; none but ``sync_free`` changes what is computed beyond floating-point rounding.

    The defaults are safe everywhere (CPU included); on a tensor-core GPU use channels_last, compile and sync_free
    (with ``trainer.precision: bf16-mixed``). The optimiser uses torch's fused kernel where one exists for it
    and the parameters are on CUDA (AdamW), otherwise its multi-tensor (foreach) kernel (Adamax).

    ``sync_free``: the skip decision, its counters and the logged values stay on the device, so a step does not
    wait for the GPU (:mod:`hvae.update`; on several GPUs, Lightning's DDP loop still reads a broadcast flag on the
    host every batch); a skipped update is undone there. The lr schedule then advances on every batch, skipped or
    not (as in vdvae; ``global_step`` counts batches); the progress bar's bits/dim and the lr, skip counters and
    divergence check are read when Lightning writes its logs (every ``log_every_n_steps``). Not with fp16's
    gradient scaler (``16-mixed``).
    """

    channels_last: bool = False  # weights and batches in NHWC memory layout
    compile: bool = False  # torch.compile the model's ELBO (forward; backward through AOTAutograd)
    compile_mode: str = "default"  # torch.compile mode: "default", "reduce-overhead", "max-autotune"
    fused_optimizer: bool = True  # fused optimiser kernel where available (CUDA, AdamW)
    sync_free: bool = False  # decide skipped updates on the device: no host synchronisation in a training step

    def __post_init__(self) -> None:
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            raise ConfigError(f"compile_mode must be one of {modes}, got {self.compile_mode!r}")


def images_of(batch) -> Tensor:
    """The images [N, C, H, W] of a training or validation batch: the batch itself, or its first item (a data
    set of (image, label) pairs)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


class HVAEModule(L.LightningModule):
    """Trains :class:`HierarchicalVAE` on the negative ELBO; validates, samples and exports the EMA weights."""

    def __init__(self, arch: HVAEConfig = HVAEConfig(), optim: OptimConfig = OptimConfig(),
                 num_images: int = 8, sample_taus: tuple[float, ...] = (1.0, 0.8, 0.6), seed: int = 0,
                 speed: SpeedConfig = SpeedConfig(), init_from: str | None = None) -> None:
        """``init_from``: a warm start from a prior export (or a train.py .ckpt's EMA): the model and its EMA
        start from those weights, with a fresh optimiser state; set ``optim.start_step`` to the step that run
        stopped at (the export's meta ``global_step``) to go on along the same schedule. A .ckpt through
        Lightning's ``--ckpt_path`` resumes exactly instead, but it is several times larger (optimiser state,
        fp32 weights and EMA) and does not fit through the GPU machine's 16 MiB per returned file."""
        super().__init__()
        self.init_from = init_from
        self.arch, self.optim, self.num_images, self.sample_taus, self.seed = arch, optim, num_images, sample_taus, seed
        self.speed = speed
        self.model = HierarchicalVAE(arch)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self._train_elbo = None  # the compiled ELBO, built at the first training step (speed.compile)
        self.automatic_optimization = False
        self.skipped_total = 0
        self.consecutive_skips = 0
        self.consecutive_nonfinite = 0
        self._device_update: DeviceUpdate | None = None  # speed.sync_free: the counters live there between reads
        self.last_val_bpd: float | None = None
        if init_from:  # here, so that a bad file stops the run before it writes anything; --ckpt_path overrides it
            self._warm_start(Path(init_from))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.Adamax if o.optimizer == "adamax" else torch.optim.AdamW
        on_cuda = all(p.device.type == "cuda" for p in params)
        fused = self.speed.fused_optimizer and "fused" in inspect.signature(cls).parameters and on_cuda
        kernel = {"fused": True} if fused else {"foreach": True}
        if self.speed.sync_free and on_cuda and not fused:  # the step count on the device, where a skip undoes it
            kernel["capturable"] = True
        opt = cls(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **kernel)

        def factor(step: int) -> float:  # a plain function: rebuilt from the config on resume
            return o.lr_factor(step)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def setup(self, stage: str) -> None:
        trainer = self._trainer  # None when set up by hand (benchmarks)
        if self.speed.sync_free and getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None:
            raise ConfigError("model.speed.sync_free does not go with trainer.precision 16-mixed: its gradient scaler "
                              "reads the device every step; use bf16-mixed or 32")
        if self.speed.channels_last:  # in place, before the optimiser is built: it keeps the same parameters
            self.model.to(memory_format=torch.channels_last)
            self.ema.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def _warm_start(self, path: Path) -> None:
        from .export import load_prior
        prior = load_prior(path)  # one-line PriorError for a missing, unsafe or damaged file
        if prior.config.to_dict() != self.arch.to_dict():
            raise ConfigError(f"--model.init_from {path} holds another architecture than model.arch; warm-start "
                              "with the config it was trained with (its config.yaml)")
        state = prior.state_dict()
        self.model.load_state_dict(state)
        self.ema.load_state_dict(state)

    def _elbo(self, x: Tensor):
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.speed.compile:
            return self.model.elbo(x)
        if self._train_elbo is None:
            mode = None if self.speed.compile_mode == "default" else self.speed.compile_mode
            self._train_elbo = torch.compile(self.model.elbo, mode=mode)
        if self.speed.compile_mode in ("reduce-overhead", "max-autotune"):  # CUDA graphs: a new step begins, the
            torch.compiler.cudagraph_mark_step_begin()  # last one's outputs (logged, backpropagated) are done with
        return self._train_elbo(x)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = images_of(batch)
        opt, sched = self.optimizers(), self.lr_schedulers()
        out = self._elbo(x)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out.loss)
        norm, skipped = self.apply_update(opt, sched)
        bs = x.shape[0]
        bpd = out.bits_per_dim.mean()
        self.log_dict({"train/loss": out.loss, "train/bits_per_dim": bpd,
                       "train/nats_per_dim": out.nats_per_dim.mean(), "train/recon_per_dim": out.recon_per_dim.mean(),
                       "train/kl_per_dim": out.kl_per_group.sum(1).mean(),
                       "train/decoder_gamma": self.model.decoder_gamma().detach().mean()},
                      prog_bar=False, batch_size=bs, sync_dist=False)
        reading = self.trainer._logger_connector.should_update_logs  # Lightning writes its logs after this step
        if self.speed.sync_free:  # device values every step; host values (one read each) every log_every_n_steps
            norm, skipped = torch.where(norm.isfinite(), norm, -1.0), skipped.float()
            if reading:
                self.read_update_counters()  # stops a diverged run
        else:
            norm, skipped = (norm if math.isfinite(norm) else -1.0), float(skipped)
        self.log_dict({"train/grad_norm": norm, "train/skipped": skipped}, batch_size=bs)
        if reading or not self.speed.sync_free:
            self.log("train/bpd", bpd.detach().cpu(), prog_bar=True, batch_size=bs, logger=False)
            self.log_dict({"train/skipped_total": float(self.skipped_total), "train/lr": sched.get_last_lr()[0]},
                          batch_size=bs)
        if reading:
            kl = out.kl_per_group.mean(0)
            self.log_dict({f"kl/group_{i:02d}": v for i, v in enumerate(kl)}, batch_size=bs)
        return out.loss.detach()

    def apply_update(self, opt, sched) -> tuple[Tensor | float, Tensor | bool]:
        """Clips the gradients of the last backward, decides whether to skip the update, steps the optimiser, the
        lr schedule and the EMA (OptimConfig's rule). Returns the gradient norm before clipping and whether the
        update was skipped: host values, or with ``speed.sync_free`` 0-d device tensors (no host read)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.speed.sync_free:
            if self._device_update is None:
                o = self.optim
                self._device_update = DeviceUpdate(o.skip_threshold, o.max_consecutive_skips, o.grad_clip,
                                                   o.ema_decay, self.skipped_total, self.consecutive_skips,
                                                   self.consecutive_nonfinite)
            norm, applied = self._device_update(params, opt, list(self.ema.parameters()),
                                                list(self.model.parameters()))
            sched.step()
            return norm, ~applied
        max_norm = self.optim.grad_clip if self.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)  # norm before clipping
        # the step's one host synchronisation (the skip decision); identical on every rank: gradients are all-reduced
        norm = float(grad_norm)
        finite = math.isfinite(norm)
        too_large = self.optim.skip_threshold > 0 and norm > self.optim.skip_threshold
        skip = not finite or (too_large and self.consecutive_skips < self.optim.max_consecutive_skips)
        if skip:
            opt.zero_grad(set_to_none=True)
            self.skipped_total += 1
            self.consecutive_skips += 1
            self.consecutive_nonfinite = 0 if finite else self.consecutive_nonfinite + 1
            self._check_divergence()
        else:
            opt.step()
            sched.step()
            self.consecutive_skips = 0
            self.consecutive_nonfinite = 0
            self.update_ema()
        return norm, skip

    def read_update_counters(self, check: bool = True) -> None:
        """With ``speed.sync_free``: copies the device's skip counters to this module (one host read); ``check``:
        stops training when as many non-finite gradients in a row as ``max_consecutive_skips`` were seen."""
        if self._device_update is not None:
            self.skipped_total, self.consecutive_skips, self.consecutive_nonfinite = self._device_update.counts()
            if check:
                self._check_divergence()

    def on_train_end(self) -> None:
        self.read_update_counters(check=False)

    def _check_divergence(self) -> None:
        if self.consecutive_nonfinite >= self.optim.max_consecutive_skips:
            raise FloatingPointError(
                f"{self.consecutive_nonfinite} consecutive non-finite gradients: training diverged; "
                "lower optim.lr or resume from an earlier checkpoint")

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- ema + (1 - decay) (model - ema), all parameters in one multi-tensor kernel."""
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - self.optim.ema_decay)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = images_of(batch)
        gen = torch.Generator(device=x.device).manual_seed(self.seed + batch_idx)
        out = self.ema.elbo(x, generator=gen)
        bs = x.shape[0]
        self.log_dict({"val/loss": out.loss, "val/bits_per_dim": out.bits_per_dim.mean(),
                       "val/nats_per_dim": out.nats_per_dim.mean(), "val/recon_per_dim": out.recon_per_dim.mean(),
                       "val/kl_per_dim": out.kl_per_group.sum(1).mean()},
                      prog_bar=False, sync_dist=True, batch_size=bs)
        self.log("val_bpd", out.bits_per_dim.mean(), prog_bar=True, sync_dist=True, batch_size=bs, logger=False)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._log_images(x[: self.num_images])

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val/bits_per_dim")
        self.last_val_bpd = float(value) if value is not None else None

    def _log_images(self, x: Tensor) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger
        from torchvision.utils import make_grid
        logger = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:
            return
        step = self.global_step
        recon = self.ema.reconstruct(x).clamp(0, 1)
        logger.experiment.add_image("val/input_vs_reconstruction", make_grid(torch.cat([x, recon]), nrow=len(x)), step)
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        for tau in self.sample_taus:
            samples = self.ema.sample(len(x), x.shape[2], x.shape[3], tau, generator=gen).clamp(0, 1)
            logger.experiment.add_image(f"samples/tau_{tau:.2f}", make_grid(samples, nrow=len(x)), step)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.read_update_counters(check=False)
        checkpoint["hvae_config"] = self.arch.to_dict()
        checkpoint["optim_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.optim).items()}
        checkpoint["update_counters"] = {"skipped_total": self.skipped_total,
                                         "consecutive_skips": self.consecutive_skips,
                                         "consecutive_nonfinite": self.consecutive_nonfinite}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hvae_config")
        if saved is not None and saved != self.arch.to_dict():
            raise ConfigError("the checkpoint was trained with another architecture; resume with the same "
                              "model.arch settings (see the run's config.yaml)")
        counters = checkpoint.get("update_counters", {})
        self.skipped_total = int(counters.get("skipped_total", 0))
        self.consecutive_skips = int(counters.get("consecutive_skips", 0))
        self.consecutive_nonfinite = int(counters.get("consecutive_nonfinite", 0))
        self._device_update = None  # rebuilt from these at the next step

    def export(self, path: str | Path, trained_on: dict | None = None) -> Path:
        """Half-precision EMA weights and the config, loadable by :func:`hvae.export.load_prior`. ``trained_on``
        (meta ``trained_on``): what the images were, e.g. ``{"kind": "patches", "size": 64}``."""
        self.read_update_counters(check=False)
        meta = {"global_step": self.optim.start_step + int(self.global_step), "skipped_total": self.skipped_total}
        if self.last_val_bpd is not None:
            meta["val_bits_per_dim"] = self.last_val_bpd
        if trained_on:
            meta["trained_on"] = dict(trained_on)
        return export_prior(self.ema, path, meta=meta)


def training_images(datamodule) -> dict:
    """What a data module trains on, for the export's meta: whole images resized to ``image_size`` (faces) or
    ``patch_size`` crops (natural images); {} for another data module."""
    if getattr(datamodule, "image_size", None) is not None:
        return {"kind": "images", "size": int(datamodule.image_size)}
    if getattr(datamodule, "patch_size", None) is not None:
        return {"kind": "patches", "size": int(datamodule.patch_size)}
    return {}


class ExportPrior(L.Callback):
    """Writes ``<log_dir>/<filename>`` (EMA, fp16) after each validation and at the end of training."""

    def __init__(self, filename: str = "prior.pt", dirpath: str | None = None) -> None:
        self.filename, self.dirpath = filename, dirpath

    def _write(self, trainer: L.Trainer, module: HVAEModule) -> None:
        if trainer.sanity_checking:
            return
        # trainer.log_dir broadcasts under DDP: every rank must ask for it, then rank 0 writes
        root = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            module.export(root / self.filename, training_images(getattr(trainer, "datamodule", None)))

    def on_validation_end(self, trainer, module) -> None:
        self._write(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self._write(trainer, module)


class TrainingSpeed(L.Callback):
    """Logs the training pace every ``trainer.log_every_n_steps`` batches: ``speed/images_per_s`` (all ranks
    together) and ``speed/ms_per_batch``, from the wall time of the window since the last logging point. The clock
    is read after waiting for the device, once per window (the host may run several steps ahead of a GPU, with
    ``speed.sync_free`` above all). A window starts after a batch has ended, so neither the first batch
    (compilation, cuDNN's autotuning) nor validation is in one."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._images = self._batches = 0

    def on_train_start(self, trainer, module) -> None:
        self._start = None

    def on_validation_end(self, trainer, module) -> None:
        self._start = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            # DDP: every rank trains on a batch of this size
            self._images += images_of(batch).shape[0] * trainer.world_size
            self._batches += 1
            if self._batches < max(1, trainer.log_every_n_steps):
                return
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        now = time.perf_counter()
        if self._start is not None:
            elapsed = now - self._start
            if trainer.is_global_zero:
                metrics = {"speed/images_per_s": self._images / elapsed,
                           "speed/ms_per_batch": 1e3 * elapsed / self._batches}
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
        self._start, self._images, self._batches = now, 0, 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with local files written crash-safely and files read as plain weights.

    Lightning stages a checkpoint in the system temporary folder and then moves it: when that folder is on
    another file system than the checkpoint (local /tmp, network run folder), the move is a copy straight
    into the destination, so a kill during it leaves a truncated ``last.ckpt``; nothing is fsynced either.
    Here local checkpoints go to a temporary file in the destination folder, are fsynced, then renamed
    (:func:`hvae.export.atomic_torch_save`); remote URLs keep Lightning's own transaction.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        from fsspec.implementations.local import LocalFileSystem

        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        """Plain weights only unless asked otherwise (``--weights_only false``): a stranger's file cannot run code."""
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            return super().load_checkpoint(path, weights_only=True if weights_only is None else weights_only, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - code in a pickle, or not a checkpoint: one line, no traceback
            raise unreadable_checkpoint(path, err) from None


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Swap the trainer's default checkpoint writer for :class:`AtomicCheckpointIO` (a custom one is kept)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
