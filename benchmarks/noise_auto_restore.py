"""What ``restore.py --noise-std auto`` costs in PSNR against the true noise level, through restore.py itself.

Centre crops of a test folder are blurred the camera's way (valid boundary) with one of the protocol's kernels
(or, with ``--scale S``, down-sampled by S with restore.py's default SR kernel, bicubic, valid boundary too),
noised, saved as 8-bit PNGs (an observation file), and restored twice by ``restore.cli.main`` (what
``restore.py`` runs): with ``--noise-std auto`` and with the true level. Prints the estimates and both PSNRs
(on the observation's frame) per noise level, and writes every run to a CSV.

    python benchmarks/noise_auto_restore.py --limit 4 --noises 2.55,7.65,12.75 --csv docs/noise_auto_restore.csv
    python benchmarks/noise_auto_restore.py --scale 4 --limit 8 --crop 256 --noises 1,2.55,7.65 --csv sr4.csv
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quality import SHARED, load_images, write_csv  # noqa: E402
from data.images import write_image  # noqa: E402
from restore.cli import main as restore_main  # noqa: E402
from restore.operators import Blur, SuperResolution, load_kernel, sigma_from_255, sr_kernel  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=SHARED / "test" / "CBSD68")
    p.add_argument("--kernels", type=Path, default=SHARED / "kernels")
    p.add_argument("--kernel", type=int, default=9, help="which of the protocol's kernels (1-12)")
    p.add_argument("--scale", type=int, default=None,
                   help="super-resolution by this factor with restore.py's default kernel (bicubic) instead of blur")
    p.add_argument("--limit", type=int, default=4, help="first N images of the folder")
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--noises", default="2.55,7.65,12.75", help="noise stds on the 0-255 scale")
    p.add_argument("--iterations", type=int, default=None, help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args(argv)
    if args.scale:  # restore.py's default --sr-kernel, the same on both sides
        task = f"sr x{args.scale}"
        make = lambda sigma: SuperResolution(sr_kernel(args.scale), args.scale, sigma, padding="valid")  # noqa: E731
        op_flags = ["--operator", "sr", "--scale", str(args.scale)]
    else:
        task, kernel_path = f"kernel {args.kernel}", args.kernels / f"{args.kernel}.npy"
        kernel = load_kernel(kernel_path)
        make = lambda sigma: Blur(kernel, sigma, padding="valid")  # noqa: E731
        op_flags = ["--operator", "blur", "--kernel", str(kernel_path)]
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for noise in [float(s) for s in args.noises.split(",")]:
            op = make(sigma_from_255(noise))
            for index, name, clean in load_images(args.folder, args.limit, args.crop, None):
                y = op.degrade(clean[None].double(), torch.Generator().manual_seed(args.seed + index)).float()
                write_image(tmp / "y.png", y[0].clamp(0, 1))
                write_image(tmp / "clean.png", op.frame(clean[None])[0])
                row = {"image": name, "task": task, "noise255": noise}
                for given in ("auto", f"{noise:g}"):
                    out = tmp / "out"
                    argv_ = ["--input", str(tmp / "y.png"), "--clean", str(tmp / "clean.png"), *op_flags,
                             "--noise-std", given, "--out", str(out), "--no-progress"]
                    if args.iterations:
                        argv_ += ["--iterations", str(args.iterations)]
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                        code = restore_main(argv_)
                    if code != 0:
                        raise SystemExit(f"restore.py {' '.join(argv_)} failed: {err.getvalue().strip()}")
                    m = json.loads((out / "metrics.json").read_text())
                    key = "auto" if given == "auto" else "true"
                    row[f"psnr_{key}"] = m["psnr"]
                    row[f"gamma_{key}"] = m["settings"]["gamma"]
                    if key == "auto":
                        row["estimate255"] = m["sigma"] * 255
                rows.append(row)
                print(f"{name} noise {noise:g}: estimate {row['estimate255']:.2f}, PSNR {row['psnr_auto']:.2f} auto, "
                      f"{row['psnr_true']:.2f} true", flush=True)
    if args.csv:
        write_csv(args.csv, rows, list(rows[0]))
    print(f"{args.limit} crops of {args.crop} from {args.folder.name}, {task}, valid boundary, 8-bit "
          f"observations, {time.perf_counter() - start:.0f} s")
    print("| noise | estimates (mean, min-max) | PSNR, true level | PSNR, --noise-std auto | difference |")
    print("|---|---|---|---|---|")
    for noise in sorted({r["noise255"] for r in rows}):
        sub = [r for r in rows if r["noise255"] == noise]
        est = [r["estimate255"] for r in sub]
        auto = sum(r["psnr_auto"] for r in sub) / len(sub)
        true = sum(r["psnr_true"] for r in sub) / len(sub)
        print(f"| {noise:g} | {sum(est) / len(est):.2f} ({min(est):.2f}-{max(est):.2f}) | {true:.2f} | {auto:.2f} | "
              f"{auto - true:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
