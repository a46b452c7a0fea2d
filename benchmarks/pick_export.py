"""Export the best prior among checkpoints (EMA and raw weights of each), judged on the validation split.

python benchmarks/pick_export.py CKPT [CKPT ...] DATA_FOLDER OUT.pt [--select restore|bpd] [--kind faces|patches]
    [--images 256] [--image-size 64] [--restore-images 8] [--tasks blur sr inpaint] [--preset PRESETS.yaml]

Each checkpoint gives two candidates, its EMA and its raw weights (for short runs an EMA whose horizon is a large
part of the run still averages in the first, poor weights). Both scores are printed for every candidate, on the
data module's own validation split (never a test set): ``--kind faces`` (FaceDataModule: whole images resized to
``--image-size``, as configs/faces*.yaml) or ``--kind patches`` (PatchDataModule: fixed ``--image-size`` patches,
as configs/natural.yaml), with the training config's ``--val-fraction`` (0.05 in the shipped configs):

- bits/dim: the negative ELBO on ``--images`` validation images (fixed posterior-sample seed); lower is better.
- restore: mean PSNR of JPMAP over ``--tasks`` on the first ``--restore-images`` validation images, each task
  with the operator's entry of ``--preset`` (gamma, tau, iterations, returned estimate); faces: the face
  protocol's blur with kernel 9 at noise 8, super-resolution x4 at noise 3, 50% random inpainting at noise 3;
  patches: the natural presets' tuning problems, blur kernel 9 at noise 7.65, SR x2 at noise 3, inpainting at
  noise 3 (0-255 scale; fixed noise and mask seed); higher is better.

``--select`` picks the exported one (default restore). The two can disagree: a prior trained longer can reach a
better bits/dim and restore worse (its latents carry more of the degraded input; BENCHMARKS.md, "The face prior
trained longer"), so a restoration prior is chosen by its restoration score. The export is half precision.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data.faces import FaceDataModule  # noqa: E402
from data.patches import PatchDataModule  # noqa: E402
from hvae.config import HVAEConfig  # noqa: E402
from hvae.export import export_prior, unreadable_checkpoint  # noqa: E402
from hvae.model import HierarchicalVAE  # noqa: E402
from hvae.module import training_images  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.operators import (Blur, Inpainting, SuperResolution, load_kernel, sr_kernel,  # noqa: E402
                               random_mask, sigma_from_255)
from restore.presets import PresetError, parse_tau, preset_for, read_presets  # noqa: E402

TASKS = ("blur", "sr", "inpaint")
# per --kind: noise std (0-255) of each task, and the SR factor (faces: the faces protocol; patches: the natural
# presets' tuning problems, benchmarks/tune.py's defaults)
NOISE255 = {"faces": {"blur": 8.0, "sr": 3.0, "inpaint": 3.0}, "patches": {"blur": 7.65, "sr": 3.0, "inpaint": 3.0}}
SR_FACTOR = {"faces": 4, "patches": 2}


@dataclass(frozen=True)
class Candidate:
    name: str  # "CKPT (ema|model weights)"
    model: HierarchicalVAE
    bits_per_dim: float
    restore_psnr: float
    step: int = -1  # the schedule's step of the weights (a warm start goes on from it: --model.optim.start_step)


def load_weights(path: Path) -> list[tuple[str, HVAEConfig, dict[str, Tensor], int]]:
    """(label, config, state, step) for the EMA and the raw weights of a checkpoint written by train.py."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: checkpoint {path} not found") from None
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a (safe) checkpoint
        raise SystemExit(f"error: {unreadable_checkpoint(path, err)}") from None
    if not isinstance(ck, dict) or "hvae_config" not in ck or "state_dict" not in ck:
        raise SystemExit(f"error: {path} is not a training checkpoint of train.py (no hvae_config/state_dict); "
                         "pass the .ckpt files under runs/.../checkpoints")
    cfg = HVAEConfig.from_dict(ck["hvae_config"])
    step = int(ck.get("global_step", -1))
    if step >= 0:  # a warm-started run counts its steps from the schedule's start_step
        step += int((ck.get("optim_config") or {}).get("start_step", 0))
    out = []
    for prefix in ("ema.", "model."):
        state = {k[len(prefix):]: v for k, v in ck["state_dict"].items() if k.startswith(prefix)}
        if state:
            out.append((prefix[:-1], cfg, state, step))
    return out


def restoration_problems(clean: Tensor, tasks: list[str], kernels: Path, presets: dict,
                         kind: str = "faces") -> list[tuple]:
    """(task, operator, y, JPMAPConfig) per task, degraded with a fixed seed; clean: [N, C, H, W] in [0, 1]."""
    h, w = clean.shape[-2:]
    out = []
    for task in tasks:
        noise255 = NOISE255[kind][task]
        sigma = sigma_from_255(noise255)
        gen = torch.Generator().manual_seed(0)
        if task == "blur":
            op = Blur(load_kernel(kernels / "9.npy"), sigma)
        elif task == "sr":
            factor = SR_FACTOR[kind]
            op = SuperResolution(sr_kernel(factor), factor, sigma)  # restore.py's default (bicubic)
        else:
            op = Inpainting(random_mask(h, w, 0.5, generator=gen), sigma)
        v = preset_for(presets, task, noise255, SR_FACTOR[kind] if task == "sr" else None)
        tau, tau_end = parse_tau(v["tau"])
        cfg = JPMAPConfig(gamma=float(v["gamma"]) / 255, tau=tau, tau_end=tau_end, max_iters=int(v["iterations"]),
                          return_estimate=v["return"])
        out.append((task, op, op.degrade(clean.double(), gen).float(), cfg))
    return out


@torch.no_grad()
def score(model: HierarchicalVAE, val: Tensor, clean: Tensor, problems: list[tuple]) -> tuple[float, float]:
    """(bits/dim on val, mean PSNR over the restoration problems on clean)."""
    nats = torch.cat([model.elbo(b, torch.Generator().manual_seed(0)).nats_per_dim for b in val.split(64)])
    psnrs = []
    for _, op, y, cfg in problems:
        est = jpmap(y, op, model, cfg).estimate.clamp(0, 1)
        psnrs.append(float((-10 * torch.log10(((est - clean) ** 2).flatten(1).mean(1))).mean()))
    return float(nats.mean()) / math.log(2), sum(psnrs) / len(psnrs)


def main(argv: list[str] | None = None) -> Candidate:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt", nargs="+", type=Path, help="training checkpoints (.ckpt of train.py)")
    p.add_argument("data", type=Path, help="the training image folder (its validation split is used)")
    p.add_argument("out", type=Path, help="the export to write (prior.pt)")
    p.add_argument("--select", choices=("restore", "bpd"), default="restore")
    p.add_argument("--kind", choices=("faces", "patches"), default="faces", help="the training data module")
    p.add_argument("--val-fraction", type=float, default=0.05, help="the training config's val_fraction")
    p.add_argument("--images", type=int, default=256, help="validation images for bits/dim")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--restore-images", type=int, default=8, help="validation images for the restoration score")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--preset", type=Path, help="restoration presets (default configs/restore/faces.yaml, "
                   "natural.yaml for --kind patches)")
    p.add_argument("--kernels", type=Path, default=ROOT.parent / "shared/data/kernels")
    args = p.parse_args(argv)
    if args.images < 1 or args.restore_images < 1:
        raise SystemExit("error: --images and --restore-images must be >= 1")
    if args.out.suffix == ".ckpt" or args.out in args.ckpt:
        raise SystemExit(f"error: the output {args.out} would overwrite a checkpoint; name a new .pt file")
    args.preset = args.preset or ROOT / "configs/restore" / ("faces.yaml" if args.kind == "faces" else "natural.yaml")
    try:
        presets = read_presets(args.preset)
    except PresetError as err:
        raise SystemExit(f"error: --preset: {err}") from None
    if "blur" in args.tasks and not (args.kernels / "9.npy").is_file():
        raise SystemExit(f"error: blur kernel {args.kernels / '9.npy'} not found; pass --kernels or drop blur from --tasks")
    weights = [(path, *w) for path in args.ckpt for w in load_weights(path)]  # every checkpoint read before work
    if args.kind == "faces":
        dm = FaceDataModule(args.data, image_size=args.image_size, batch_size=32, val_fraction=args.val_fraction)
    else:
        dm = PatchDataModule(str(args.data), patch_size=args.image_size, batch_size=32, val_fraction=args.val_fraction,
                             val_samples=args.images)
    dm.setup("fit")
    n = min(args.images, len(dm.val_set))
    val = torch.stack([dm.val_set[i] for i in range(n)])
    clean = val[: args.restore_images]
    problems = restoration_problems(clean, args.tasks, args.kernels, presets, args.kind)
    print(f"# {n} validation images for bits/dim; {len(clean)} for the restoration score ({', '.join(args.tasks)}; "
          f"presets {args.preset})")
    best: Candidate | None = None
    for path, label, cfg, state, step in weights:
        model = HierarchicalVAE(cfg).eval()
        model.load_state_dict(state)
        bpd, restore_psnr = score(model, val, clean, problems)
        cand = Candidate(f"{path} ({label} weights, step {step})", model, bpd, restore_psnr, step)
        print(f"{cand.name}: {bpd:.3f} bits/dim, restoration {restore_psnr:.2f} dB", flush=True)
        better = (best is None or (restore_psnr > best.restore_psnr if args.select == "restore"
                                   else bpd < best.bits_per_dim))
        best = cand if better else best
    export_prior(best.model, args.out, half=True, meta={"selected_by": args.select, "source": best.name,
                                                        "bits_per_dim": best.bits_per_dim,
                                                        "restore_psnr": best.restore_psnr,
                                                        "global_step": best.step,
                                                        "trained_on": training_images(dm)})
    print(f"exported {best.name} to {args.out} (selected by {args.select}): {best.bits_per_dim:.3f} bits/dim, "
          f"restoration {best.restore_psnr:.2f} dB")
    return best


if __name__ == "__main__":
    main()
