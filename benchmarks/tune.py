"""Grid search of gamma and tau per task on the VALIDATION split of the training folder (never the test sets).

python benchmarks/tune.py --task blur --crops 3 --size 128
Prints PSNR (mean over crops) of x_K and G(z_K) for each (gamma, tau); the best goes to configs/restore/.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data.images import list_images, read_image  # noqa: E402
from data.patches import split_files  # noqa: E402
from hvae.export import load_prior  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.operators import (Blur, Denoising, Inpainting, SuperResolution, gaussian_kernel, load_kernel,  # noqa: E402
                               random_mask, sigma_from_255)

ROOT = Path(__file__).resolve().parent.parent


def task_operator(task: str, size: int, kernels: Path, blur_noise: float = 7.65, sr_factor: int = 2):
    g = torch.Generator().manual_seed(0)
    if task == "blur":
        return Blur(load_kernel(kernels / "9.npy"), sigma_from_255(blur_noise))
    if task == "denoise":
        return Denoising(sigma_from_255(25))
    if task == "sr":
        return SuperResolution(gaussian_kernel(0.5 * sr_factor), sr_factor, sigma_from_255(3))
    return Inpainting(random_mask(size, size, 0.5, generator=g), sigma_from_255(3))


def psnr(x, ref):
    return float((-10 * torch.log10(((x.clamp(0, 1) - ref) ** 2).flatten(1).mean(1))).mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=["blur", "denoise", "sr", "inpaint"], default="blur")
    p.add_argument("--folder", default=str(ROOT.parent / "shared/data/train/natural-CBSD432"))
    p.add_argument("--kernels", default=str(ROOT.parent / "shared/data/kernels"))
    p.add_argument("--prior", default=str(ROOT / "priors/natural.pt"))
    p.add_argument("--crops", type=int, default=3)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--gammas", type=float, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--taus", type=float, nargs="+", default=[0.6, 0.8, 0.9, 1.0])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--blur-noise", type=float, default=7.65, help="blur task noise, 0-255 scale (faces: 8)")
    p.add_argument("--sr-factor", type=int, default=2, help="sr task factor (faces: 4)")
    args = p.parse_args()
    _, val = split_files(list_images(args.folder), 0.05, 0, root=args.folder)
    s = args.size
    crops = []
    for f in val[: args.crops]:
        x = read_image(f, channels=3)
        top, left = (x.shape[1] - s) // 2, (x.shape[2] - s) // 2
        crops.append(x[:, top: top + s, left: left + s])
    clean = torch.stack(crops)
    op = task_operator(args.task, s, Path(args.kernels), args.blur_noise, args.sr_factor)
    y = op.degrade(clean.double(), torch.Generator().manual_seed(0)).float()
    prior = load_prior(args.prior)
    print(f"# task {args.task} ({op.__class__.__name__}), prior {args.prior}, {len(crops)} validation crops of {s}x{s}, {args.iters} iterations")
    print("| gamma/255 | tau | PSNR x_K | PSNR G(z_K) |")
    print("|---|---|---|---|")
    for gamma, tau in itertools.product(args.gammas, args.taus):
        r = jpmap(y, op, prior, JPMAPConfig(gamma=gamma / 255, tau=tau, max_iters=args.iters))
        print(f"| {gamma:g} | {tau:g} | {psnr(r.x, clean):.2f} | {psnr(r.decoded, clean):.2f} |", flush=True)


if __name__ == "__main__":
    main()
