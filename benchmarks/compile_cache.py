"""What torch.compile's warm-up costs a second run: the compiled JPMAP pass timed in two fresh processes that share
one Inductor cache directory (empty before the first).

The first process compiles (about a minute per image or tile shape on a GPU for the published network); the second
finds the compiled code in Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_$USER``), so a user pays the compilation once per shape and machine, not once per run.

    python benchmarks/compile_cache.py --size 64 [--device cuda --precision bf16 --channels-last --fuse-nets
        --mode reduce-overhead --size 320x448]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> dict:
    """One process: load the prior, build the compiled pass, time its first call (the compilation) and its second."""
    sys.path.insert(0, str(ROOT))
    import torch
    from hvae.export import load_prior
    from restore.jpmap import JPMAPConfig, make_decoder_step
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    prior = load_prior(args.prior, map_location=device)
    cfg = JPMAPConfig(precision=args.precision, channels_last=args.channels_last, fuse_nets=args.fuse_nets,
                      compile=True, compile_mode=args.mode)
    step = make_decoder_step(prior, cfg.taus(prior.num_groups), cfg)
    height, width = args.size
    x = torch.rand(1, prior.image_channels, height, width, device=device)
    times = []
    with torch.no_grad():
        for _ in range(2):
            start = time.perf_counter()
            step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {"first_s": times[0], "second_s": times[1]}


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", type=Path, default=ROOT / "priors" / "natural.pt")
    p.add_argument("--size", type=_size, default=(64, 64), help="N or HxW (a multiple of the prior's factor)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--fuse-nets", action="store_true")
    p.add_argument("--mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir", type=Path, help="Inductor cache to use (default: a new empty temporary one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return []
    if not args.prior.is_file():
        raise SystemExit(f"error: prior {args.prior} not found; pass --prior")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "inductor"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--child"]
        rows = []
        for run in (1, 2):
            proc = subprocess.run([sys.executable, __file__, "--child", *forwarded], env=env, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"error: run {run} failed: {tail}")
            rows.append({"run": run, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(f"process {run}: first call {rows[-1]['first_s']:.1f} s (compiling, or loading from the cache), "
                  f"second call {rows[-1]['second_s'] * 1e3:.0f} ms", flush=True)
    return rows


if __name__ == "__main__":
    main()
