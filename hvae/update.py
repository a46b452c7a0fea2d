"""A training step's update, decided on the device: clip, skip, optimiser step and EMA without a host read.

The update rule is the one of :class:`hvae.module.OptimConfig`: with ``n = ||g||`` the total gradient norm,

    apply = isfinite(n) and (n <= skip_threshold or consecutive_skips >= max_consecutive_skips)
    if apply:  g <- g min(1, grad_clip / n);  theta <- optimiser(theta, g);  ema <- ema + (1 - decay)(theta - ema)
    else:      theta, the optimiser's moments and ema stay as they were

Deciding on the host reads ``n`` once per step (a synchronisation that empties the GPU's queue, so the CPU's work
for the next step is no longer hidden behind the GPU's). :class:`DeviceUpdate` keeps ``apply`` a 0-d bool tensor:

1. ``g <- g if apply else 0``, non-finite values included (one concatenation, one select, one multi-tensor copy);
2. the weights and the optimiser's state on their device (its moments, and its step count where that lives on the
   device: always on a CPU, on CUDA with a fused or ``capturable`` optimiser, which HVAEModule asks for) are copied,
   the optimiser steps, and ``t <- t * apply + saved * (1 - apply)`` puts them back when ``apply`` is false (the
   same values: 0/1 factors, and the step from zero gradients is finite; a -0.0 may come back as +0.0);
3. ``ema <- ema + (1 - decay) apply (theta - ema)``;
4. the counters (skipped in all, skipped in a row, non-finite in a row) are device tensors too.

What differs from the host decision: the lr schedule advances on every batch, skipped or not (as in vdvae, whose
scheduler steps on every batch and its optimiser only on the updates it applies), and so does Lightning's
``global_step``; the counters reach the host when :meth:`DeviceUpdate.counts` is read (the module reads them when
Lightning writes its logs, every ``log_every_n_steps`` steps, so consecutive non-finite gradients stop training
there rather than at once).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _flat_view(t: Tensor) -> Tensor:
    """The 1-D view of a dense tensor in its memory order (contiguous or channels_last alike)."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    flat = t.permute(order)
    if not flat.is_contiguous():
        raise ValueError(f"a gradient of shape {tuple(t.shape)} and strides {t.stride()} is not dense")
    return flat.view(-1)


@torch.no_grad()
def zero_unless(keep: Tensor, tensors: list[Tensor]) -> None:
    """``t <- t if keep else 0`` for every tensor (NaN and inf included), ``keep`` a 0-d bool tensor on their
    device; no host synchronisation."""
    if not tensors:
        return
    views = [_flat_view(t) for t in tensors]
    flat = torch.where(keep, torch.cat(views), 0.0)  # [sum of numels]
    torch._foreach_copy_(views, list(flat.split([v.numel() for v in views])))


class DeviceUpdate:
    """The update of :mod:`hvae.update`'s docstring for one model, its EMA and its optimiser.

    ``skipped_total``, ``consecutive_skips``, ``consecutive_nonfinite``: the counters to start from (a resumed run's).
    """

    def __init__(self, skip_threshold: float, max_consecutive_skips: int, grad_clip: float, ema_decay: float,
                 skipped_total: int = 0, consecutive_skips: int = 0, consecutive_nonfinite: int = 0) -> None:
        self.skip_threshold, self.max_consecutive_skips = skip_threshold, max_consecutive_skips
        self.grad_clip, self.ema_decay = grad_clip, ema_decay
        self._start = (skipped_total, consecutive_skips, consecutive_nonfinite)
        self._counts: Tensor | None = None  # [skipped_total, consecutive_skips, consecutive_nonfinite], int64
        self._saved: list[Tensor] = []

    def counts(self) -> tuple[int, int, int]:
        """(skipped in all, skipped in a row, non-finite in a row): one host read."""
        if self._counts is None:
            return self._start
        return tuple(int(v) for v in self._counts.tolist())

    @staticmethod
    def _device_state(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> list[Tensor]:
        """The weights and the optimiser's per-weight state on their device, in a fixed order."""
        out = list(params)
        for p in params:
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.device == p.device:
                    out.append(value)
        return out

    @torch.no_grad()
    def __call__(self, params: list[Tensor], optimizer, ema_params: list[Tensor], model_params: list[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        """One update from the gradients in ``params``; ``optimizer.step()`` is called whatever the decision.
        Returns the gradient norm before clipping and ``apply``, both 0-d tensors on the device."""
        params = [p for p in params if p.grad is not None]
        device = params[0].device
        if self._counts is None:
            self._counts = torch.tensor(self._start, dtype=torch.int64).to(device, non_blocking=True)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)  # [], before clipping
        finite = torch.isfinite(norm)
        apply = finite
        if self.skip_threshold > 0:
            forced = self._counts[1] >= self.max_consecutive_skips
            apply = finite & ((norm <= self.skip_threshold) | forced)
        zero_unless(apply, [p.grad for p in params])

        before = self._device_state(optimizer, params)
        if len(self._saved) != len(before) or any(s.shape != t.shape for s, t in zip(self._saved, before)):
            self._saved = [torch.empty_like(t) for t in before]
        torch._foreach_copy_(self._saved, before)
        optimizer.step()
        after = self._device_state(optimizer, params)
        keep, undo = apply.to(torch.float32), (~apply).to(torch.float32)
        known = {id(t) for t in before}
        new = [t for t in after if id(t) not in known]  # state the first step created: undone to zeros
        torch._foreach_mul_(before + new, keep)
        torch._foreach_mul_(self._saved, undo)
        torch._foreach_add_(before, self._saved)

        step = torch._foreach_sub(model_params, ema_params)
        torch._foreach_mul_(step, keep * (1.0 - self.ema_decay))
        torch._foreach_add_(ema_params, step)

        total, in_a_row, nonfinite = self._counts.unbind()
        skipped = (~apply).to(torch.int64)
        self._counts = torch.stack([total + skipped, (in_a_row + 1) * skipped,
                                    torch.where(finite, 0, nonfinite + 1)])
        return norm, apply
