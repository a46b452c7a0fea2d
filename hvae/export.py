"""Compact prior files: half-precision EMA weights plus the config as a plain dict.

Loaded with ``torch.load(..., weights_only=True)``, so a file from a stranger cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, HVAEConfig
from .model import HierarchicalVAE

FORMAT = "pnp-hvae-prior"
VERSION = 1


class PriorError(ValueError):
    """A prior file cannot be used; the message says why and what to do."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_prior(model: HierarchicalVAE, path: str | os.PathLike, half: bool = True,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights (fp16 when ``half``) and config to ``path`` atomically."""
    state = {k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), "state_dict": state,
               "meta": dict(meta or {})}
    atomic_torch_save(payload, path)
    return Path(path)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PriorError(f"prior file {path} not found; pass --prior with an export (prior.pt) or a .ckpt from train.py")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a (safe) checkpoint
        raise unreadable_checkpoint(path, err) from None
    if not isinstance(payload, dict):
        raise PriorError(f"{path} is not a prior checkpoint (it holds a {type(payload).__name__})")
    return payload


def unreadable_checkpoint(path: str | os.PathLike, err: Exception) -> PriorError:
    """One-line error for a file ``torch.load(..., weights_only=True)`` refused: code in a pickle, or not a checkpoint."""
    if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        return PriorError(f"refusing to load {path}: it is not a plain-weights checkpoint ({_unsafe_reason(err)}); "
                          "use a file written by train.py")
    return PriorError(f"{path} is not a readable checkpoint ({type(err).__name__}); "
                      "use a prior.pt or .ckpt written by train.py")


def _unsafe_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that names what the pickle asked for (e.g. GLOBAL posix.system)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line]
    return (named or lines)[0][:160]


def _state_and_config(payload: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if payload.get("format") == FORMAT:
        if payload.get("version") != VERSION:
            raise PriorError(f"{path} has prior format version {payload.get('version')}, this code reads {VERSION}")
        return payload["state_dict"], payload["config"]
    if "hvae_config" in payload and "state_dict" in payload:  # a Lightning checkpoint of HVAEModule
        prefix = "ema."
        state = {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
        return state, payload["hvae_config"]
    raise PriorError(f"{path} is not a PnP-HVAE prior (no '{FORMAT}' format tag and no hvae_config); "
                     "use a prior.pt or .ckpt written by train.py")


def load_prior(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> HierarchicalVAE:
    """Rebuild the prior from an export or a Lightning checkpoint; returned in eval mode, no grads."""
    path = Path(path)
    payload = _read(path)
    state, config_dict = _state_and_config(payload, path)
    try:
        config = HVAEConfig.from_dict(dict(config_dict))
        model = HierarchicalVAE(config)
    except (ConfigError, ValueError, TypeError) as err:
        raise PriorError(f"{path} holds an invalid model config: {err}") from None
    missing, unexpected = _mismatch(model, state)
    if missing or unexpected:
        raise PriorError(f"{path} does not match its architecture ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected or mis-shaped tensors, e.g. {(missing + unexpected)[:2]}); "
                         "the file is damaged or from another model")
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise PriorError(f"{path} holds non-finite weights ({len(non_finite)} tensors, e.g. {non_finite[:2]}); "
                         "its training diverged: export an earlier checkpoint")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device=map_location, dtype=dtype).eval().requires_grad_(False)


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k, v in state.items()
                  if k not in own or not isinstance(v, torch.Tensor) or v.shape != own[k].shape]
    return missing, unexpected


def prior_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` dict of an export (training step, validation bits/dim, ...)."""
    payload = _read(Path(path))
    return dict(payload.get("meta", {}))
