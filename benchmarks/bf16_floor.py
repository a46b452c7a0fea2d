"""bf16's rounding floor in JPMAP: how far a bf16 network pass is from the fp32 one, and what that does to the
residual and to the result.

For each image (the quality protocol's degradation and noise seed: ``benchmarks/quality.py``, seed + the image's
index in its folder) and the preset's gamma, tau and returned estimate for the setting:

1. JPMAP in fp32 for ``--warm`` iterations from the operator's start: x.
2. The pass error at x: RMS of G_bf16(E(x)) - G_fp32(E(x)) ("G") and of what the x-step makes of it,
   prox(G_bf16) - prox(G_fp32) ("x-step"), the part of the error that enters the next iterate.
3. With ``--floor M``: JPMAP in bf16 and in fp32 from the start, tol 0, M iterations each: the bf16 residual's floor
   (the median of its last 5 RMS residuals; a ``tol`` below it is never reached, so bf16 runs its ``max_iters``),
   fp32's last residual, and the PSNR of both after the same M iterations.

    python benchmarks/bf16_floor.py --limit 4 --kernel 4 --noise 2.55 --floor 30 --threads 1

Prints a markdown table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DATASETS, build_settings, load_images, machine_line, observation, psnr  # noqa: E402
from data.images import DataError, atomic_write_bytes  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap, make_decoder_step  # noqa: E402
from restore.operators import OperatorError  # noqa: E402
from restore.presets import PresetError, parse_tau, preset_for, read_presets  # noqa: E402


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def measure(y, op, clean, prior, gamma: float, tau, tau_end, returns: str, warm: int, floor_iters: int,
            fuse_nets: bool) -> dict:
    fp32 = JPMAPConfig(gamma=gamma, tau=tau, tau_end=tau_end, return_estimate=returns, tol=0.0, divergence_guard=None,
                       check_every=1000)
    bf16 = replace(fp32, precision="bf16", channels_last=True, fuse_nets=fuse_nets)
    x = jpmap(y, op, prior, replace(fp32, max_iters=warm)).x
    taus = fp32.taus(prior.num_groups)
    g32, g16 = make_decoder_step(prior, taus, fp32)(x), make_decoder_step(prior, taus, bf16)(x)
    row = {"warm": warm, "pass_rms_G": rms(g16 - g32),
           "pass_rms_xstep": rms(op.prox_l2(g16, y, gamma) - op.prox_l2(g32, y, gamma))}
    if floor_iters:
        r32 = jpmap(y, op, prior, replace(fp32, max_iters=floor_iters))
        r16 = jpmap(y, op, prior, replace(bf16, max_iters=floor_iters))
        row.update(iters=floor_iters, bf16_floor=statistics.median(r16.history.residual[-5:]),
                   fp32_last_residual=r32.history.residual[-1], psnr_fp32=psnr(r32.estimate, clean),
                   psnr_bf16=psnr(r16.estimate, clean))
        row["psnr_diff"] = row["psnr_bf16"] - row["psnr_fp32"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=DATASETS["natural"][0])
    p.add_argument("--prior", type=Path, default=DATASETS["natural"][1])
    p.add_argument("--preset", type=Path, default=DATASETS["natural"][2])
    p.add_argument("--kernels", type=Path, default=DATASETS["natural"][0].parent.parent / "kernels")
    p.add_argument("--kernel", type=int, default=4, help="blur kernel of the protocol (its .npy in --kernels)")
    p.add_argument("--noise", type=float, default=2.55, help="noise std on the 0-255 scale")
    p.add_argument("--limit", type=int, default=4, help="N images (sorted by name)")
    p.add_argument("--start", type=int, default=0, help="skip the first N images")
    p.add_argument("--crop", type=int, help="centre crop S x S (CPU runs)")
    p.add_argument("--seed", type=int, default=0, help="as quality.py's: the noise of image i is seeded seed + i")
    p.add_argument("--warm", type=int, default=10, help="fp32 iterations before the pass error is measured")
    p.add_argument("--floor", type=int, default=0, help="M > 0: also run bf16 and fp32 JPMAP for M iterations each")
    p.add_argument("--fuse-nets", action="store_true", help="bf16 with JPMAPConfig(fuse_nets=True)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    if args.limit < 1 or args.start < 0 or args.warm < 1 or args.floor < 0:
        raise SystemExit("error: need --limit >= 1, --start >= 0, --warm >= 1 and --floor >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.prior.is_file():
        raise SystemExit(f"error: prior {args.prior} not found; pass --prior")
    try:
        preset = preset_for(read_presets(args.preset), "blur", args.noise)
    except PresetError as err:
        raise SystemExit(f"error: --preset: {err}") from None
    tau, tau_end = parse_tau(preset["tau"])
    gamma = preset["gamma"] / 255
    device = torch.device(args.device)
    from hvae.export import load_prior
    prior = load_prior(args.prior, map_location=device)
    try:
        setting = build_settings(["deblur"], args.kernels, [args.kernel], [args.noise])[0]
        images = load_images(args.folder, args.limit, args.crop, None, args.start)
    except (OperatorError, DataError) as err:
        raise SystemExit(f"error: {err}") from None
    if not images:
        raise SystemExit(f"error: no images in {args.folder} from --start {args.start}")
    print(f"# {machine_line(device)}\n# python benchmarks/bf16_floor.py {' '.join(sys.argv[1:] if argv is None else argv)}"
          f"\n# {setting.name}, gamma {preset['gamma']:g}/255, tau {preset['tau']}, returns {preset['return']}", flush=True)
    columns = ["image", "size", "warm", "pass_rms_G", "pass_rms_xstep"]
    if args.floor:
        columns += ["iters", "bf16_floor", "fp32_last_residual", "psnr_fp32", "psnr_bf16", "psnr_diff"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)
    rows = []
    for idx, name, full in images:
        op, y = observation(setting, full[None], args.seed + idx, device)
        clean = full[None].to(device)
        start = time.perf_counter()
        row = {"image": name, "size": f"{clean.shape[-2]}x{clean.shape[-1]}", "setting": setting.name,
               **measure(y, op, clean, prior, gamma, tau, tau_end, preset["return"], args.warm, args.floor,
                          args.fuse_nets)}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        cells = [f"{row[c]:.2e}" if c in ("pass_rms_G", "pass_rms_xstep", "bf16_floor", "fp32_last_residual")
                 else f"{row[c]:+.4f}" if c == "psnr_diff" else f"{row[c]:.3f}" if c.startswith("psnr")
                 else str(row[c]) for c in columns]
        print("| " + " | ".join(cells) + " |", flush=True)
        if args.json:  # rewritten after every image, atomically: an interrupted run keeps the rows it has
            atomic_write_bytes(args.json, json.dumps(rows, indent=1).encode())
    means = {c: statistics.mean(r[c] for r in rows) for c in columns if c not in ("image", "size", "warm", "iters")}
    print("# mean: " + ", ".join(f"{c} {v:.4g}" for c, v in means.items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
