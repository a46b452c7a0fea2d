"""Seconds per iteration of JPMAP and of Adam on J(x, z) against image size (deblurring, shipped prior).

python benchmarks/restore_speed.py --sizes 64 128 256 --iters 5 [--device cuda] [--precision bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hvae.export import load_prior  # noqa: E402
from restore.baselines import AdamConfig, adam_joint  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.operators import Blur, gaussian_kernel  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prior", default=str(Path(__file__).resolve().parent.parent / "priors" / "natural.pt"))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    prior = load_prior(args.prior, map_location=device)
    op = Blur(gaussian_kernel(1.6), 0.03).to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {name}, torch {torch.__version__}, prior {Path(args.prior).name}, {args.precision}, {args.iters} iterations")
    print("| size | JPMAP s/iter | Adam s/iter | Adam / JPMAP |")
    print("|---|---|---|---|")
    for size in args.sizes:
        y = torch.rand(1, 3, size, size, device=device)
        jp = JPMAPConfig(max_iters=1, precision=args.precision)
        jpmap(y, op, prior, jp)  # warm-up
        _sync(device)
        t = time.perf_counter()
        jpmap(y, op, prior, JPMAPConfig(max_iters=args.iters, tol=0.0, precision=args.precision))
        _sync(device)
        t_jp = (time.perf_counter() - t) / args.iters
        adam_joint(y, op, prior, AdamConfig(max_iters=1, precision=args.precision))
        _sync(device)
        t = time.perf_counter()
        adam_joint(y, op, prior, AdamConfig(max_iters=args.iters, precision=args.precision))
        _sync(device)
        t_adam = (time.perf_counter() - t) / args.iters
        print(f"| {size}x{size} | {t_jp:.3f} | {t_adam:.3f} | {t_adam / t_jp:.2f} |", flush=True)


if __name__ == "__main__":
    main()
