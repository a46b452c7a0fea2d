"""Two runs of one method on the same images, paired: PSNR of B minus A per image-setting (bf16 against fp32, a
code change against the code before it), over all the shared rows and over those where both ran as many iterations.

    python benchmarks/compare_runs.py docs/gpu/h200_2026-11-27/quality_fp32.csv docs/bf16_full_k4s2.55_cpu_after.csv \
        --method pnp-hvae --tolerance 0.05
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import read_rows as read_quality_rows  # noqa: E402


def read_rows(path: Path, method: str) -> dict[tuple, dict]:
    """(dataset, image, task, setting, height, width) -> the row of ``method`` in one quality.py CSV."""
    rows = {key[:-1]: r for key, r in read_quality_rows([path]).items() if key[-1] == method}
    if any("iterations" not in r for r in rows.values()):
        raise SystemExit(f"error: {path} has no iterations column: not a CSV of benchmarks/quality.py")
    return rows


def summary(diffs: list[float], tolerance: float) -> str:
    within = sum(abs(d) <= tolerance for d in diffs)
    return (f"{len(diffs)} image-settings: mean {statistics.mean(diffs):+.4f} dB, largest |difference| "
            f"{max(map(abs, diffs)):.4f} dB, within {tolerance:g} dB: {within}/{len(diffs)}")


def compare(a: dict[tuple, dict], b: dict[tuple, dict], tolerance: float) -> list[str]:
    shared = [k for k in a if k in b]
    if not shared:
        raise SystemExit("error: the two CSVs share no image-setting of this method (same images, crop, tasks?)")
    diffs = [b[k]["psnr"] - a[k]["psnr"] for k in shared]
    same = [d for k, d in zip(shared, diffs) if a[k]["iterations"] == b[k]["iterations"]]
    mean_it = [statistics.mean(int(r[k]["iterations"]) for k in shared) for r in (a, b)]
    lines = ["all: " + summary(diffs, tolerance),
             "as many iterations: " + (summary(same, tolerance) if same else "none"),
             f"iterations: A {mean_it[0]:.1f}, B {mean_it[1]:.1f} on average; "
             f"A stopped earlier on {sum(int(a[k]['iterations']) < int(b[k]['iterations']) for k in shared)}, "
             f"B on {sum(int(b[k]['iterations']) < int(a[k]['iterations']) for k in shared)}"]
    worst = sorted(zip(diffs, shared), key=lambda t: -abs(t[0]))[:5]
    lines += [f"  {k[1]} {k[3]}: {d:+.4f} dB ({a[k]['iterations']} / {b[k]['iterations']} iterations)" for d, k in worst]
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="the reference run (quality.py CSV)")
    p.add_argument("b", type=Path, help="the run compared with it")
    p.add_argument("--method", default="pnp-hvae")
    p.add_argument("--tolerance", type=float, default=0.05, help="dB")
    args = p.parse_args(argv)
    lines = compare(read_rows(args.a, args.method), read_rows(args.b, args.method), args.tolerance)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
