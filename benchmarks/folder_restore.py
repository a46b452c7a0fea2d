"""restore.py on a folder against restore.py run image by image (a shell loop): the same PSNRs, and the time of each.

    python benchmarks/folder_restore.py --folder ../shared/data/test/CBSD68 --limit 8 --crop 256 \\
        --kernel ../shared/data/kernels/9.npy --noise-std 7.65 --batches 1 4 --out out/folder_bench

Centre crops of the first ``--limit`` images of ``--folder`` are written to OUT/clean; then, each as one command
timed from outside (process start, prior loading and image IO included):
  * ``restore.py --clean OUT/clean --images-per-batch N`` for each N of ``--batches``;
  * ``restore.py --clean OUT/clean/NAME.png --seed INDEX`` for every image (the loop a user would write; the seed is
    what the folder run gives the image: ``--seed`` + its index in the sorted folder).
Prints a markdown table (seconds, seconds per image, mean PSNR, the largest PSNR difference from the loop's) and
writes it as CSV to ``--csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quality import centre_crop, write_csv  # noqa: E402
from data.images import builtin_images, list_images, read_image, write_image  # noqa: E402


def crops(folder: Path, out: Path, limit: int, size: int) -> list[Path]:
    """Centre crops of ``size`` (or less) of the first ``limit`` images of ``folder`` (``builtin``: scikit-image's
    photographs, no data needed) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if str(folder) == "builtin":
        images = [(f"photo{k:02d}", image) for k, image in enumerate(builtin_images(3)[:limit])]
    else:
        images = [(path.stem, read_image(path)) for path in list_images(folder)[:limit]]
    paths = []
    for stem, image in images:
        paths.append(out / f"{stem}.png")
        write_image(paths[-1], centre_crop(image, size))
    return paths


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "restore.py"), *argv, "--no-progress"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"restore.py failed: {done.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, required=True, help="a folder of images, or builtin")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--kernel", type=Path, default=None, help="blur kernel (default: Gaussian of std 1.6)")
    p.add_argument("--noise-std", type=float, default=7.65)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--extra", default="", help="more restore.py flags for every run, e.g. --extra='--iterations 10'")
    p.add_argument("--out", type=Path, default=Path("out/folder_bench"))
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args()
    clean = crops(args.folder, args.out / "clean", args.limit, args.crop)
    blur = ["--kernel", str(args.kernel)] if args.kernel else ["--blur-sigma", "1.6"]
    common = ["--operator", "blur", *blur, "--noise-std", str(args.noise_std), *args.extra.split()]
    loop_seconds, loop_psnr = 0.0, {}
    for index, path in enumerate(sorted(clean)):
        out = args.out / "loop" / path.stem
        loop_seconds += timed(["--clean", str(path), "--seed", str(index), *common, "--out", str(out)])
        loop_psnr[path.stem] = json.loads((out / "metrics.json").read_text())["psnr"]
    rows = [{"run": "restore.py per image (shell loop)", "seconds": loop_seconds,
             "psnr": sum(loop_psnr.values()) / len(loop_psnr), "max_psnr_difference": 0.0}]
    for batch in args.batches:
        out = args.out / f"folder_b{batch}"
        seconds = timed(["--clean", str(args.out / "clean"), *common, "--images-per-batch", str(batch),
                         "--out", str(out)])
        with open(out / "metrics.csv", newline="") as f:
            psnr = {r["name"]: float(r["psnr"]) for r in csv.DictReader(f)}
        rows.append({"run": f"restore.py on the folder, --images-per-batch {batch}", "seconds": seconds,
                     "psnr": sum(psnr.values()) / len(psnr),
                     "max_psnr_difference": max(abs(psnr[k] - loop_psnr[k]) for k in loop_psnr)})
    n = len(clean)
    print(f"{n} crops of {args.crop} from {args.folder}, blur {' '.join(blur)}, noise {args.noise_std} {args.extra}")
    print("| run | seconds | per image | mean PSNR | largest PSNR difference from the loop |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['seconds']:.1f} | {r['seconds'] / n:.2f} | {r['psnr']:.3f} | "
              f"{r['max_psnr_difference']:.2g} |")
    if args.csv is not None:
        write_csv(args.csv, rows, list(rows[0]))


if __name__ == "__main__":
    main()
