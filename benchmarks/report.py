"""Paired tables from quality.py CSVs: each method against a reference, over the images every method has.

    python benchmarks/report.py docs/quality_natural_full_*.csv docs/gpu/*/quality_fp32.csv \
        --task deblur --methods pnp-hvae tv wiener --against tv

No restoration runs here. The CSVs are read in order and a row that several of them hold (same dataset, image,
task, setting, size and method) comes from the last one, as with quality.py's ``--merge``. The table keeps the
images that have a row for every listed method in every setting of the task (``--settings`` to require fewer),
so that each mean is over the same images; it gives the mean PSNR per setting and method, the difference of the
first method to ``--against`` and on how many images the first is ahead, then the mean over all settings.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path


def read_rows(paths: Sequence[Path]) -> dict[tuple, dict]:
    """(dataset, image, task, setting, height, width, method) -> row; the last CSV given wins."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        try:
            with open(path, newline="") as f:
                found = list(csv.DictReader(f))
        except OSError as err:
            raise SystemExit(f"error: {path}: {err.strerror or err}") from None
        for line, r in enumerate(found, start=2):
            try:
                key = (r["dataset"], r["image"], r["task"], r["setting"], int(r["height"]), int(r["width"]), r["method"])
                r["psnr"] = float(r["psnr"])
            except (KeyError, TypeError, ValueError):
                raise SystemExit(f"error: {path}: line {line} is not a row of benchmarks/quality.py "
                                 "(dataset, image, task, setting, height, width, method, psnr)") from None
            rows[key] = r
    return rows


def paired_table(rows: dict[tuple, dict], task: str, methods: Sequence[str], against: str,
                 settings: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """The markdown table and the images it is over (see the module docstring)."""
    by = defaultdict(dict)  # (image, setting) -> method -> psnr
    for (_, image, t, setting, _, _, method), r in rows.items():
        if t == task:
            by[(image, setting)][method] = r["psnr"]
    settings = list(settings) if settings else sorted({s for _, s in by}, key=_setting_order)
    images = sorted({i for i, _ in by if all(m in by.get((i, s), {}) for s in settings for m in methods)})
    if not images:
        raise SystemExit(f"error: no image has a row of every method ({', '.join(methods)}) in every setting of "
                         f"{task}; pass fewer --methods or --settings")
    first = methods[0]
    head = ["setting"] + list(methods) + [f"{first} - {against}", f"{first} ahead"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, cells: list[tuple[str, str]]) -> str:
        mean = {m: sum(by[c][m] for c in cells) / len(cells) for m in methods}
        ahead = sum(by[c][first] > by[c][against] for c in cells)
        return (f"| {name} | " + " | ".join(f"{mean[m]:.2f}" for m in methods)
                + f" | {mean[first] - mean[against]:+.2f} | {ahead}/{len(cells)} |")

    for s in settings:
        lines.append(row(s, [(i, s) for i in images]))
    if len(settings) > 1:
        lines.append(row(f"**all {len(settings)} settings**", [(i, s) for i in images for s in settings]))
    return "\n".join(lines), images


def _setting_order(name: str) -> tuple:
    """k4 s2.55 < k4 s7.65 < k7 s2.55 ...: numbers compared as numbers."""
    parts = []
    for tok in name.split():
        head = tok.rstrip("0123456789.")
        try:
            parts.append((head, float(tok[len(head):])))
        except ValueError:
            parts.append((tok, 0.0))
    return tuple(parts)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", type=Path, nargs="+", help="CSVs of benchmarks/quality.py (the last wins on a shared row)")
    p.add_argument("--task", default="deblur")
    p.add_argument("--methods", nargs="+", default=["pnp-hvae", "tv", "wiener"])
    p.add_argument("--against", default="tv", help="the method the first one is compared with (one of --methods)")
    p.add_argument("--settings", nargs="+", help="only these settings (as in the CSV, e.g. 'k4 s2.55')")
    args = p.parse_args(argv)
    if args.against not in args.methods[1:]:
        p.error(f"--against {args.against} must be one of the other --methods ({', '.join(args.methods[1:])})")
    table, images = paired_table(read_rows(args.csv), args.task, args.methods, args.against, args.settings)
    text = f"{len(images)} images: {', '.join(images)}\n\n{table}"
    print(text)
    return text


if __name__ == "__main__":
    main()
