"""Training-step throughput of an HVAE config: images/s and peak memory, fp32 vs bf16 autocast.

python benchmarks/train_throughput.py --config configs/natural.yaml --size 64 --batch 64
Times the full step the LightningModule does (forward ELBO, backward, clip, Adamax, EMA update).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hvae.config import HVAEConfig  # noqa: E402
from hvae.model import HierarchicalVAE  # noqa: E402


def step_time(model, ema, opt, x, precision: str, steps: int, device) -> tuple[float, float]:
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.elbo(x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0, foreach=True)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 0.001)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # peak resident set size of the process (includes the Python runtime)
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return elapsed, peak


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/natural.yaml")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    arch = HVAEConfig.from_dict(yaml.safe_load(open(args.config))["model"]["arch"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {args.config}: {name}, batch {args.batch} of {args.size}x{args.size}, torch {torch.__version__}")
    print("| precision | ms/step | images/s | peak MiB (GPU allocated / CPU process RSS) |")
    print("|---|---|---|---|")
    for precision in args.precisions.split(","):
        torch.manual_seed(0)
        model = HierarchicalVAE(arch).to(device)
        ema = HierarchicalVAE(arch).to(device).requires_grad_(False)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-4, foreach=True)
        x = torch.rand(args.batch, arch.image_channels, args.size, args.size, device=device)
        sec, peak = step_time(model, ema, opt, x, precision, args.steps, device)
        print(f"| {precision} | {sec * 1e3:.1f} | {args.batch / sec:.1f} | {peak:.0f} |")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# parameters: {n_params / 1e6:.2f} M")


if __name__ == "__main__":
    main()
