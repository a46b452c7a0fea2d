"""Grid search of gamma, tau (value or START:END schedule) and iterations per task and noise level on the
VALIDATION split of the training folder (never the test sets).

python benchmarks/tune.py --task blur --noise 2.55 --kernel-ids 4 9 --crops 3 --size 128 --taus 0.9 1.0:0.8
Prints the PSNR of the start x_0 (``--start``: the operator's init or the Wiener estimate) and of Wiener, then
PSNR (mean over crops and kernels) of x_K and G(z_K) for each (gamma, tau, iterations); the best goes to
configs/restore/ as the entry of that operator and noise (see restore/presets.py).
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
from restore.baselines import tikhonov  # noqa: E402
from restore.cli import from_prior_channels  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.presets import parse_tau  # noqa: E402
from restore.operators import (Blur, Denoising, Inpainting, SuperResolution, bayer_mask, prior_operator, sr_kernel,  # noqa: E402
                               load_kernel, random_box_mask, random_mask, sigma_from_255)

ROOT = Path(__file__).resolve().parent.parent


DEFAULT_NOISE = {"blur": 7.65, "denoise": 25.0, "sr": 3.0, "inpaint": 3.0, "demosaic": 2.55}  # 0-255 scale


def task_operator(task: str, size: int, kernel: Path, noise255: float, sr_factor: int = 2, mask: str = "random",
                  boundary: str = "circular"):
    g = torch.Generator().manual_seed(0)
    sigma = sigma_from_255(noise255)
    if task == "blur":
        return Blur(load_kernel(kernel), sigma, boundary)
    if task == "denoise":
        return Denoising(sigma)
    if task == "sr":
        return SuperResolution(sr_kernel(sr_factor), sr_factor, sigma, boundary)  # restore.py's default
    if task == "demosaic":  # restore.py --operator demosaic's default pattern
        return Inpainting(bayer_mask(size, size, "RGGB"), sigma)
    if mask == "boxes":  # as benchmarks/quality.py's inpaint_boxes: 3 squares of a fifth of the side
        return Inpainting(random_box_mask(size, size, g), sigma)
    return Inpainting(random_mask(size, size, 0.5, generator=g), sigma)


def psnr(x, ref):
    return float((-10 * torch.log10(((x.clamp(0, 1) - ref) ** 2).flatten(1).mean(1))).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=["blur", "denoise", "sr", "inpaint", "demosaic"], default="blur")
    p.add_argument("--folder", default=str(ROOT.parent / "shared/data/train/natural-CBSD432"))
    p.add_argument("--kernels", default=str(ROOT.parent / "shared/data/kernels"))
    p.add_argument("--prior", default=str(ROOT / "priors/natural.pt"))
    p.add_argument("--crops", type=int, default=3)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--gammas", type=float, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--taus", nargs="+", default=["0.6", "0.8", "0.9", "1.0"],
                   help="each a value, a comma list (one per group) or START:END (linear top->bottom)")
    p.add_argument("--iters", type=int, nargs="+", default=[30])
    p.add_argument("--noise", type=float, help="noise std, 0-255 scale (default: blur 7.65, denoise 25, sr and "
                                                "inpaint 3, demosaic 2.55; faces blur: 8)")
    p.add_argument("--kernel-ids", nargs="+", default=["9"], help="blur kernels (files KERNELS/<id>.npy)")
    p.add_argument("--sr-factor", type=int, default=2, help="sr task factor (faces: 4)")
    p.add_argument("--mask", choices=["random", "boxes"], default="random",
                   help="inpaint task: 50%% random pixels or 3 random boxes")
    p.add_argument("--divergence-guard", type=float, default=4.0, help="JPMAPConfig.divergence_guard (0: off)")
    p.add_argument("--boundary", choices=["circular", "valid"], default="circular",
                   help="blur, sr: circular (the protocol) or valid (photographs: the crop is the scene, y holds the "
                        "outputs whose kernel support lies inside it; PSNR on y's frame)")
    p.add_argument("--start", choices=["init", "wiener"], default="init",
                   help="x_0: the operator's init (default) or the Wiener/Tikhonov estimate (grad std 0.1)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3,
                   help="1: the crops grey, restored as grey images (through a colour prior: GreyObservation)")
    args = p.parse_args(argv)
    if args.boundary == "valid" and args.task not in ("blur", "sr"):
        p.error("--boundary valid is for --task blur or sr")
    _, val = split_files(list_images(args.folder), 0.05, 0, root=args.folder)
    s = args.size
    crops = []
    for f in val[: args.crops]:
        x = read_image(f, channels=args.channels)
        top, left = (x.shape[1] - s) // 2, (x.shape[2] - s) // 2
        crops.append(x[:, top: top + s, left: left + s])
    clean = torch.stack(crops)
    noise = args.noise if args.noise is not None else DEFAULT_NOISE[args.task]
    kernels = [Path(args.kernels) / f"{k}.npy" for k in (args.kernel_ids if args.task == "blur" else ["-"])]
    problems = []  # (operator, y, x_0, Wiener estimate) per kernel
    for kernel in kernels:
        op = task_operator(args.task, s, kernel, noise, args.sr_factor, args.mask, args.boundary)
        y = op.degrade(clean.double(), torch.Generator().manual_seed(0)).float()
        wiener = tikhonov(y, op, grad_std=0.1).estimate
        problems.append((op, y, wiener if args.start == "wiener" else op.init(y), wiener))
    prior = load_prior(args.prior)
    where = f", kernels {' '.join(args.kernel_ids)}" if args.task == "blur" else ""
    print(f"# task {args.task}, noise {noise:g}/255{where}, prior {args.prior}, {len(crops)} validation crops of "
          f"{s}x{s}, {args.boundary} boundary, divergence guard {args.divergence_guard or 'off'}, x_0 {args.start}")
    def score(op, x):  # on what y's pixels show (all of x unless valid)
        return psnr(op.frame(x), op.frame(clean))

    start_psnr = sum(score(op, x0) for op, _, x0, _ in problems) / len(problems)
    wiener_psnr = sum(score(op, w) for op, _, _, w in problems) / len(problems)
    print(f"# PSNR of x_0 {start_psnr:.2f}, of Wiener (grad std 0.1) {wiener_psnr:.2f}")
    print("| gamma/255 | tau | iterations | PSNR x_K | PSNR G(z_K) |")
    print("|---|---|---|---|---|")
    channels = clean.shape[1]
    for gamma, tau_text, iters in itertools.product(args.gammas, args.taus, args.iters):
        tau, tau_end = parse_tau(tau_text)
        px = pd = 0.0
        for op, y, x0, _ in problems:
            hv_op = prior_operator(op, channels, prior.image_channels)
            x0 = hv_op.spread(x0) if hv_op is not op else x0  # a grey start in the colour prior's channels
            r = jpmap(y, hv_op, prior, JPMAPConfig(gamma=gamma / 255, tau=tau, tau_end=tau_end, max_iters=iters,
                                                   divergence_guard=args.divergence_guard or None), x0=x0)
            x, decoded = from_prior_channels(r.x, channels), from_prior_channels(r.decoded, channels)  # grey again
            px, pd = px + score(op, x) / len(problems), pd + score(op, decoded) / len(problems)
        print(f"| {gamma:g} | {tau_text} | {iters} | {px:.2f} | {pd:.2f} |", flush=True)


if __name__ == "__main__":
    main()
