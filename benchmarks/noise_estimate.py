"""How well ``restore.noise.estimate_noise_std`` (``restore.py --noise-std auto``) finds the noise of an observation.

Each clean image of a test folder is degraded the way ``benchmarks/quality.py`` does (valid blur and
super-resolution: a photograph's boundary; three missing boxes), plus plain denoising, at several noise levels,
saved to 8 bits like an observation file (``--no-quantize``: kept in float), and its noise std estimated by

- ``pca``: the project's estimator (Chen, Zhu, Heng 2015: eigenvalues of the patch covariance);
- ``mad``: Donoho's median absolute deviation of the finest diagonal Haar wavelet coefficients, median / 0.6745
  (what ``skimage.restoration.estimate_sigma`` does with another wavelet), the common quick estimate.

Prints, per task and noise level, the median and the 90th percentile of |estimate / truth - 1| and the mean of
estimate / truth - 1 (the bias), and writes every estimate to a CSV.

    python benchmarks/noise_estimate.py --limit 24 --csv docs/noise_estimate.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quality import (SHARED, Setting, build_settings, centre_crop, load_images,  # noqa: E402
                                observation, write_csv)
from restore.noise import estimate_noise_std  # noqa: E402
from restore.operators import Denoising, Inpainting, sigma_from_255  # noqa: E402


def haar_mad(y: Tensor) -> float:
    """Donoho's estimate: median |HH| / 0.6745 of the one-level orthonormal Haar transform of [1, C, H, W] y."""
    y = y[..., : y.shape[-2] // 2 * 2, : y.shape[-1] // 2 * 2]
    hh = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2
    return float(hh.abs().median() / 0.6745)


def settings(tasks: list[str], kernels: Path, noise: float) -> list[Setting]:
    out = []
    for task in tasks:
        if task == "denoise":
            out.append(Setting("denoise", f"s{noise:g}", noise, "", 1, lambda h, w, g: Denoising(sigma_from_255(noise))))
        elif task == "deblur":
            out += build_settings(["deblur"], kernels, [4, 7, 9, 11], [noise], boundary="valid")
        elif task in ("sr2", "sr4"):
            out += build_settings([task], kernels, [], [], sr_noise=noise, boundary="valid")
        else:
            out += build_settings([task], kernels, [], [])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=SHARED / "test" / "CBSD68")
    p.add_argument("--kernels", type=Path, default=SHARED / "kernels")
    p.add_argument("--limit", type=int, default=24, help="first N images of the folder")
    p.add_argument("--crop", type=int, default=None, help="centre crop to at most this size")
    p.add_argument("--tasks", default="denoise,deblur,sr2,sr4,inpaint_boxes",
                   help="inpaint_random is refused by the estimator (no wholly observed patch)")
    p.add_argument("--noises", default="1,2.55,7.65,12.75,25,50", help="noise stds on the 0-255 scale")
    p.add_argument("--no-quantize", action="store_true", help="keep y in float (default: 8 bits, as a saved file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args(argv)
    images = [(i, n, centre_crop(x, None, 4)) for i, n, x in load_images(args.folder, args.limit, args.crop, None)]
    rows = []
    start = time.perf_counter()
    for noise in [float(s) for s in args.noises.split(",")]:
        for setting in settings(args.tasks.split(","), args.kernels, noise):
            if setting.task.startswith("inpaint"):  # its setting has a fixed noise: rebuild it at this level
                setting = Setting(setting.task, f"{setting.name.split(' s')[0]} s{noise:g}", noise, "", 1,
                                  lambda h, w, g, make=setting.make, n=noise: _renoised(make(h, w, g), n))
            for index, name, clean in images:
                op, y = observation(setting, clean[None], args.seed + index, torch.device("cpu"))
                if not args.no_quantize:
                    y = (y.clamp(0, 1) * 255).round() / 255
                mask = getattr(op, "mask", None)
                truth = sigma_from_255(noise)
                est = {"pca": float(estimate_noise_std(y, mask=mask)[0]),
                       "mad": haar_mad(y) if mask is None else float("nan")}
                for method, value in est.items():
                    rows.append({"image": name, "task": setting.task, "setting": setting.name, "noise255": noise,
                                 "method": method, "estimate255": value * 255, "ratio": value / truth})
    seconds = time.perf_counter() - start
    if args.csv:
        write_csv(args.csv, rows, list(rows[0]))
    print(f"{len(images)} images of {args.folder.name}, {'float' if args.no_quantize else '8-bit'} observations, "
          f"{seconds:.0f} s")
    print("| task | noise | pca: median abs err | pca: p90 | pca: bias | mad: median abs err | mad: p90 | mad: bias |")
    print("|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["task"], r["noise255"]) for r in rows}, key=lambda k: (args.tasks.split(",").index(k[0]), k[1]))
    for task, noise in keys:
        cells = []
        for method in ("pca", "mad"):
            ratios = torch.tensor([r["ratio"] for r in rows if (r["task"], r["noise255"], r["method"]) == (task, noise, method)])
            if ratios.isnan().all():
                cells += ["-"] * 3
                continue
            err = (ratios - 1).abs()
            cells += [f"{float(err.median()):.1%}", f"{float(err.quantile(0.9)):.1%}", f"{float((ratios - 1).mean()):+.1%}"]
        print(f"| {task} | {noise:g} | " + " | ".join(cells) + " |")
    return 0


def _renoised(op, noise: float):
    return Inpainting(op.mask, sigma_from_255(noise))


if __name__ == "__main__":
    raise SystemExit(main())
