"""Operators with no built-in class (restore.operators.MatrixFree, from_deepinv): PnP-HVAE against baselines on the
same degraded images.

    python benchmarks/matrix_free.py --limit 8 --crop 128 --out docs/matrix_free.csv

Tasks (noise ``--noise``, 2.55 on the 0-255 scale):
  demosaic      deepinv's Bayer Demosaicing physics through ``from_deepinv`` (one colour observed per pixel; its
                prox is deepinv's closed form; start: each channel's harmonic interpolation)
  blur_missing  kernel ``--kernel`` (9, a motion blur, of the published protocol's 12) with circular boundaries,
                then 50% of the pixels missing (one mask for the three channels): A = M K, given to MatrixFree as
                two functions; its x-step is solved by conjugate gradients; start: the harmonic interpolation of y

Protocol as benchmarks/quality.py: image i of the sorted test folder, centre crop, generator seeded ``--seed`` + i
(mask first, then the noise, added in float64), PSNR of the estimate clamped to [0, 1] on the whole crop, SSIM from
torchmetrics. Every method restores the same y with the same operator object.

Settings are chosen per task on ``--tune-crops`` crops of the validation split of ``--tune-folder`` (never the test
images), each method on its own grid: JPMAP gamma x tau x return (30 iterations), Wiener's gradient std, TV's c
(lam = c sigma), PnP-BM3D's lam (DPIR's HQS, 8 iterations; skipped with a note without ``.[bench]``); Adam on
J(x, z) (200 iterations, lr 1e-2) uses JPMAP's gamma and tau.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.quality import (centre_crop, load_bm3d, load_images, machine_line, pnp_bm3d, psnr,  # noqa: E402
                                ssim, write_csv)
from data.images import list_images, read_image  # noqa: E402
from data.patches import split_files  # noqa: E402
from hvae.export import load_prior  # noqa: E402
from restore.baselines import AdamConfig, adam_joint, tikhonov, total_variation  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.operators import (Blur, Inpainting, MatrixFree, from_deepinv, load_kernel, random_mask,  # noqa: E402
                               sigma_from_255)

TASKS = ("demosaic", "blur_missing")
METHODS = ("start", "wiener", "tv", "pnp-bm3d", "adam", "pnp-hvae")
FIELDS = ("task", "image", "method", "psnr", "ssim", "seconds", "iterations", "settings")
GRIDS = {"gamma": (10, 20, 40), "tau": (1.0, 0.9), "wiener": (0.05, 0.1, 0.2), "tv": (0.025, 0.1, 0.4, 1.6),
         "bm3d": (0.1, 0.23, 0.5, 1.0)}


def make_operator(task: str, height: int, width: int, generator: torch.Generator, sigma: float, kernel: Tensor):
    """The task's operator; a mask, if any, drawn from ``generator``."""
    if task == "demosaic":
        import deepinv

        return from_deepinv(deepinv.physics.Demosaicing(img_size=(height, width)), sigma=sigma)
    blur, mask = Blur(kernel, sigma), random_mask(height, width, 0.5, generator=generator)

    def A(x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, C, H, W], missing pixels 0
        return mask.to(x) * blur.A(x)

    def A_adjoint(y: Tensor) -> Tensor:
        return blur.A_adjoint(mask.to(y) * y)

    return MatrixFree(A, A_adjoint, sigma, wraps=True, init=Inpainting(mask, sigma).init)


def problems(task: str, images: Sequence[tuple[int, str, Tensor]], seed: int, sigma: float, kernel: Tensor):
    """(index, name, clean [1, C, H, W], operator, y) per image, as benchmarks/quality.py degrades them."""
    out = []
    for index, name, clean in images:
        gen = torch.Generator().manual_seed(seed + index)
        op = make_operator(task, *clean.shape[-2:], gen, sigma, kernel)
        out.append((index, name, clean[None], op, op.degrade(clean[None].double(), gen).float()))
    return out


def methods(prior, bm3d) -> dict[str, Callable[[Tensor, object, dict], tuple[Tensor, int]]]:
    """name -> restore(y, operator, setting) -> (estimate, iterations)."""
    def hvae(y, op, s):
        r = jpmap(y, op, prior, JPMAPConfig(gamma=s["gamma"] / 255, tau=s["tau"], max_iters=30,
                                            return_estimate=s["return"]))
        return r.estimate, r.iterations

    def adam(y, op, s):
        r = adam_joint(y, op, prior, AdamConfig(gamma=s["gamma"] / 255, tau=s["tau"], return_estimate=s["return"]))
        return r.estimate, r.iterations

    out = {"start": lambda y, op, s: (op.init(y), 0),
           "wiener": lambda y, op, s: (tikhonov(y, op, grad_std=s["grad_std"]).estimate, 1),
           "tv": lambda y, op, s: (total_variation(y, op, lam=s["c"] * op.sigma).estimate, 1),
           "adam": adam, "pnp-hvae": hvae}
    if bm3d is not None:
        out["pnp-bm3d"] = lambda y, op, s: pnp_bm3d(y, op, bm3d, 8, s["lam"])
    return out


def grid(method: str) -> list[dict]:
    if method == "pnp-hvae":
        return [{"gamma": g, "tau": t, "return": r}
                for g, t, r in itertools.product(GRIDS["gamma"], GRIDS["tau"], ("x", "decoded"))]
    key, name = {"wiener": ("wiener", "grad_std"), "tv": ("tv", "c"), "pnp-bm3d": ("bm3d", "lam")}.get(method,
                                                                                                         (None, None))
    return [{name: v} for v in GRIDS[key]] if key else [{}]


def tune(val: list, restore: dict, method: str) -> tuple[dict, str]:
    """The setting of ``method``'s grid with the best mean PSNR on the validation problems, and a report line.
    JPMAP's x_K and G(z_K) come from one run per (gamma, tau)."""
    if method == "adam" or len(grid(method)) == 1:
        return {}, ""
    scores: dict[int, list[float]] = {}
    settings = grid(method)
    for i, s in enumerate(settings):
        if method == "pnp-hvae" and s["return"] == "decoded":
            continue  # scored with its "x" twin below
        for _, _, clean, op, y in val:
            if method == "pnp-hvae":
                r = jpmap(y, op, restore["prior"], JPMAPConfig(gamma=s["gamma"] / 255, tau=s["tau"], max_iters=30))
                scores.setdefault(i, []).append(psnr(r.x, clean))
                scores.setdefault(i + 1, []).append(psnr(r.decoded, clean))
            else:
                scores.setdefault(i, []).append(psnr(restore[method](y, op, s)[0], clean))
    best = max(scores, key=lambda i: sum(scores[i]))
    line = ", ".join(f"{_text(settings[i])}: {sum(v) / len(v):.2f}" for i, v in scores.items())
    return settings[best], line


def _text(s: dict) -> str:
    return " ".join(f"{k} {v:g}" if isinstance(v, float | int) else f"{k} {v}" for k, v in s.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=str(ROOT.parent / "shared/data/test/CBSD68"))
    p.add_argument("--tune-folder", default=str(ROOT.parent / "shared/data/train/natural-CBSD432"))
    p.add_argument("--tune-crops", type=int, default=4)
    p.add_argument("--kernels", default=str(ROOT.parent / "shared/data/kernels"))
    p.add_argument("--kernel", type=int, default=9)
    p.add_argument("--prior", default=str(ROOT / "priors/natural.pt"))
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--noise", type=float, default=2.55)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="CSV of every row (written atomically)")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    bm3d = load_bm3d() if "pnp-bm3d" in args.methods else None
    restore = methods(prior, bm3d) | {"prior": prior}
    chosen = [m for m in args.methods if m in restore]
    images = load_images(Path(args.folder), args.limit, args.crop, None)
    folder = Path(args.tune_folder)
    val_files = split_files(list_images(folder), 0.05, 0, root=folder)[1][:args.tune_crops]
    val_images = [(1000 + i, f.stem, centre_crop(read_image(f, channels=3), args.crop)) for i, f in enumerate(val_files)]
    sigma, kernel = sigma_from_255(args.noise), load_kernel(Path(args.kernels) / f"{args.kernel}.npy")
    print(f"# {machine_line(torch.device('cpu'))}; prior {args.prior}; noise {args.noise:g}; kernel {args.kernel}; "
          f"{len(images)} crops of {args.crop} from {args.folder}", flush=True)
    rows: list[dict] = []
    for task in args.tasks:
        val = problems(task, val_images, args.seed, sigma, kernel)
        settings = {}
        for m in chosen:
            settings[m], line = tune(val, restore, m)
            if line:
                print(f"# {task} {m} on validation crops {', '.join(v[1] for v in val)}: {line}", flush=True)
        settings["adam"] = settings.get("pnp-hvae") or tune(val, restore, "pnp-hvae")[0]
        for index, name, clean, op, y in problems(task, images, args.seed, sigma, kernel):
            for m in chosen:
                start = time.perf_counter()
                estimate, iterations = restore[m](y, op, settings[m])
                rows.append({"task": task, "image": name, "method": m, "psnr": psnr(estimate, clean),
                             "ssim": ssim(estimate, clean), "seconds": time.perf_counter() - start,
                             "iterations": iterations, "settings": _text(settings[m])})
            print(f"{task} {name}: " + ", ".join(f"{r['method']} {r['psnr']:.2f}" for r in rows[-len(chosen):]),
                  flush=True)
            if args.out:
                write_csv(Path(args.out), rows, FIELDS)
        print(f"\n| {task} | " + " | ".join(chosen) + " |\n|---|" + "---:|" * len(chosen))
        sub = [r for r in rows if r["task"] == task]
        for key, digits in (("psnr", 2), ("ssim", 3), ("seconds", 2)):
            means = [sum(r[key] for r in sub if r["method"] == m) / max(1, len(images)) for m in chosen]
            print(f"| {key} | " + " | ".join(f"{v:.{digits}f}" for v in means) + " |")
        print("| settings | " + " | ".join(_text(settings[m]) or "-" for m in chosen) + " |\n", flush=True)
    return rows


if __name__ == "__main__":
    main()
