"""Tiled JPMAP on a large image: megapixels/s per process, peak host RSS and device memory.

python benchmarks/restore_large.py                      # 1024x1024, 1 vs 2 CPU processes, tiny prior
python benchmarks/restore_large.py --size 8192          # 8k x 8k: host memory stays flat (slow on CPU)
python benchmarks/restore_large.py --accelerator gpu --processes 1 --tiles-per-batch 1,4,16,64
python benchmarks/restore_large.py --accelerator gpu --processes 1 --tiles-per-batch 16 --fast [--compile reduce-overhead]
python benchmarks/restore_large.py --prior priors/natural.pt --size 2048 --iters 20

Every configuration runs in a fresh process (``--worker``), so peak RSS (``getrusage``, per rank) is its own.
The observation is a uint8 .npy memory map (denoising, sigma 10/255), written in strips, and the output a
TIFF written from the memory-mapped accumulator, so neither needs the whole image in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tiny_prior(path: Path) -> Path:
    """The test suite's tiny HVAE with redrawn random weights (a textured, non-trivial G)."""
    from hvae.config import HVAEConfig
    from hvae.export import export_prior
    from hvae.model import HierarchicalVAE

    cfg = HVAEConfig(image_channels=3, stem_channels=8, widths=(8, 8, 8), strides=(2, 2, 1), encoder_blocks=(1, 1, 1),
                     latent_groups=(1, 2, 1), kernel_sizes=(3, 3, 3), latent_channels=3)
    torch.manual_seed(0)
    model = HierarchicalVAE(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "log_gamma":
                p.copy_(torch.randn(p.shape, generator=g) * (0.75 / p[0].numel() ** 0.5 if p.ndim > 1 else 0.075))
    return export_prior(model, path, half=False)


def make_observation(path: Path, size: int, sigma: float) -> Path:
    """A size x size x 3 uint8 noisy synthetic image written strip by strip into a .npy memory map."""
    from numpy.lib.format import open_memmap

    a = open_memmap(path, mode="w+", dtype=np.uint8, shape=(size, size, 3))
    xs = torch.arange(size, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    for r in range(0, size, 256):
        ys = torch.arange(r, min(size, r + 256), dtype=torch.float32)[:, None]
        base = torch.stack([0.5 + 0.4 * torch.sin(ys / 37 + c + xs / (23 + 7 * c)) for c in range(3)], -1)
        noisy = base + sigma * torch.randn(base.shape, generator=g)
        a[r:r + len(ys)] = (noisy.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    a.flush()
    del a
    return path


def worker(args: argparse.Namespace) -> None:
    from restore.jpmap import JPMAPConfig
    from restore.operators import Denoising
    from restore.predict import restore_tiled

    config = JPMAPConfig(max_iters=args.iters, tol=0)
    if args.fast:  # what restore.py --fast sets on this device
        from restore.cli import fast_settings
        device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
        config = replace(config, **fast_settings(device, args.compile is not None))
    if args.compile:
        config = replace(config, compile=True, compile_mode=args.compile)
    start = time.perf_counter()
    restore_tiled(args.y, Denoising(args.sigma), args.prior, config, args.out,
                  tile=args.tile, halo=args.halo, tiles_per_batch=args.tpb, devices=args.processes,
                  accelerator=args.accelerator, strategy="ddp" if args.processes > 1 else "auto")
    seconds = time.perf_counter() - start
    rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    Path(f"{args.report}.rank{rank}").write_text(json.dumps({"seconds": seconds, "rss_mib": rss, "cuda_mib": cuda}))


def run_one(args, processes: int, tpb: int, y: Path, prior: Path, work: Path) -> dict:
    out = work / f"p{processes}_b{tpb}" / "restored.tif"
    report = work / f"p{processes}_b{tpb}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--y", str(y), "--prior", str(prior),
           "--out", str(out), "--report", str(report), "--tile", str(args.tile), "--iters", str(args.iters),
           "--processes", str(processes), "--tpb", str(tpb), "--accelerator", args.accelerator,
           "--sigma", str(args.sigma)] + (["--halo", str(args.halo)] if args.halo is not None else [])
    cmd += (["--fast"] if args.fast else []) + (["--compile", args.compile] if args.compile else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    ranks = [json.loads(Path(f"{report}.rank{r}").read_text()) for r in range(processes)]
    seconds = ranks[0]["seconds"]  # rank 0 returns after assembling, i.e. last
    mp = args.size**2 / 1e6
    return {"processes": processes, "tpb": tpb, "seconds": seconds, "mp_s_per_process": mp / seconds / processes,
            "rss_mib": max(r["rss_mib"] for r in ranks), "cuda_mib": max(r["cuda_mib"] for r in ranks)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (8192: the 8k x 8k case)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--halo", type=int, default=None)
    p.add_argument("--iters", type=int, default=5, help="JPMAP iterations (tol 0: always this many)")
    p.add_argument("--processes", default="1,2", help="comma list of process counts")
    p.add_argument("--tiles-per-batch", default="4", help="comma list (a sweep; on a GPU e.g. 1,4,16,64)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--prior", type=Path, default=None, help="prior export (default: a tiny random-weight prior)")
    p.add_argument("--sigma", type=float, default=10 / 255)
    p.add_argument("--fast", action="store_true", help="restore.py --fast's JPMAP settings on this accelerator")
    p.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune"], default=None,
                   help="torch.compile the z-step (one compilation per tile shape: the first batch's time holds it)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--y", "--out", "--report"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--tpb", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.processes = int(args.processes)
        return worker(args)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        prior = args.prior or tiny_prior(work / "prior.pt")
        t = time.perf_counter()
        y = make_observation(work / "y.npy", args.size, args.sigma)
        device = torch.cuda.get_device_name() if args.accelerator in ("gpu", "cuda") else f"CPU ({os.cpu_count()} cores)"
        fast = (" --fast" if args.fast else "") + (f" --compile {args.compile}" if args.compile else "")
        print(f"# {args.size}x{args.size} RGB denoising{fast}, tile {args.tile}, {args.iters} JPMAP iterations, prior "
              f"{Path(prior).name}, {device}, torch {torch.__version__} (input made in {time.perf_counter() - t:.1f} s)")
        print("| processes | tiles/batch | seconds | MP/s per process | peak RSS MiB (max rank) | device MiB |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n in (int(v) for v in args.processes.split(",")):
            for tpb in (int(v) for v in args.tiles_per_batch.split(",")):
                r = run_one(args, n, tpb, y, Path(prior), work)
                print(f"| {n} | {tpb} | {r['seconds']:.1f} | {r['mp_s_per_process']:.3f} | {r['rss_mib']:.0f} | "
                      f"{r['cuda_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
