"""Tiled against whole-image JPMAP with a real prior: PSNR gap and seam statistic per operator.

python benchmarks/tiling_accuracy.py                          # shipped prior, presets, 2 CBSD68-like images
python benchmarks/tiling_accuracy.py --images ../shared/data/test/CBSD68 --limit 2 --size 192 --tile 64

Every operator runs with its restore.py preset (configs/restore/natural.yaml: gamma, tau, iterations,
returned estimate) and the default halo, on the same degraded image, once on the whole image and once tile
by tile (restore.predict.restore_tiled, one process). Printed per image and operator: PSNR of the whole and
of the stitched estimate against the clean image, their difference, the PSNR of the stitched estimate against
the whole-image one, and the seam ratio: mean squared gradient across interior tile borders divided by the
mean squared gradient elsewhere, for the stitched estimate and for the whole-image one (the same pixels, so a
seam shows as a larger ratio in the stitched estimate).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.images import builtin_images, list_images, read_image  # noqa: E402
from hvae.export import load_prior  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.operators import (Blur, Denoising, Inpainting, SuperResolution, gaussian_kernel, load_kernel,  # noqa: E402
                               random_mask, sigma_from_255, sr_kernel)
from restore.predict import restore_tiled  # noqa: E402
from restore.presets import parse_tau, preset_for, read_presets  # noqa: E402
from restore.tiling import TileGrid, default_halo, is_circular  # noqa: E402


def preset_config(presets: dict, name: str, noise255: float, factor: int | None = None) -> JPMAPConfig:
    """restore.py's setting in ``presets`` of operator ``name`` at noise std ``noise255`` (0-255) and SR ``factor``."""
    v = preset_for(presets, name, noise255, factor)
    tau, tau_end = parse_tau(v["tau"])
    return JPMAPConfig(gamma=float(v["gamma"]) / 255, tau=tau, tau_end=tau_end, max_iters=int(v["iterations"]),
                       tol=0.0, return_estimate=v["return"])


def operators(height: int, width: int, kernels: Path, g: torch.Generator) -> dict:
    """label: (preset name, noise std 0-255, operator); SR with restore.py's default kernel (bicubic)."""
    k9 = load_kernel(kernels / "9.npy") if (kernels / "9.npy").is_file() else gaussian_kernel(2.0)
    return {
        "blur motion (k9, 7.65)": ("blur", 7.65, Blur(k9, sigma_from_255(7.65))),
        "blur gaussian (1.6, 7.65)": ("blur", 7.65, Blur(gaussian_kernel(1.6), sigma_from_255(7.65))),
        "sr x2 bicubic (3)": ("sr", 3.0, SuperResolution(sr_kernel(2), 2, sigma_from_255(3))),
        "denoise (25)": ("denoise", 25.0, Denoising(sigma_from_255(25))),
        "inpaint 50% (3)": ("inpaint", 3.0, Inpainting(random_mask(height, width, 0.5, generator=g),
                                                       sigma_from_255(3))),
    }


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.double() - b.double()) ** 2).mean()))


def seam_ratio(x: torch.Tensor, grid: TileGrid) -> float:
    """Mean squared finite difference across interior core boundaries / mean squared difference elsewhere."""
    rows, cols = grid.core_boundaries()
    dv = (x[..., 1:, :] - x[..., :-1, :]) ** 2  # dv[i]: between rows i and i + 1
    dh = (x[..., :, 1:] - x[..., :, :-1]) ** 2
    rmask = torch.zeros(dv.shape[-2], dtype=torch.bool)
    cmask = torch.zeros(dh.shape[-1], dtype=torch.bool)
    rmask[[r - 1 for r in rows]] = True
    cmask[[c - 1 for c in cols]] = True
    across = torch.cat([dv[..., rmask, :].flatten(), dh[..., cmask].flatten()])
    inside = torch.cat([dv[..., ~rmask, :].flatten(), dh[..., ~cmask].flatten()])
    return float(across.mean() / inside.mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=str(ROOT / "priors" / "natural.pt"))
    ap.add_argument("--images", default=None, help="folder of test images (default: scikit-image photographs)")
    ap.add_argument("--kernels", default=str(ROOT.parent / "shared" / "data" / "kernels"))
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--size", type=int, default=192, help="centre crop side (output pixels)")
    ap.add_argument("--tile", type=int, default=64, help="tile core side (output pixels)")
    ap.add_argument("--only", default=None, help="run the operators whose name contains this text")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    presets = read_presets(ROOT / "configs" / "restore" / "natural.yaml")
    if args.images:
        clean = [(Path(p).name, read_image(p)) for p in list_images(args.images)[:args.limit]]
    else:
        clean = [(f"skimage{i}", x) for i, x in enumerate(builtin_images(3)[:args.limit])]
    print(f"prior {args.prior}, tile {args.tile}, crop {args.size}, CPU threads {args.threads}")
    print("| image | operator | iters | halo | tiles | whole dB | tiled dB | diff dB | tiled vs whole dB | seam ratio tiled / whole | s whole / tiled |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    diffs = []
    for name, x in clean:
        c, h, w = x.shape
        s = args.size
        x = x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s][None].double()
        ops = operators(s, s, Path(args.kernels), torch.Generator().manual_seed(0))
        for label, (preset, noise255, op) in ops.items():
            if args.only and args.only not in label:
                continue
            g = torch.Generator().manual_seed(1)
            scale = int(getattr(op, "factor", 1))
            y = op.degrade(x, generator=g).float()
            cfg = preset_config(presets, preset, noise255, scale if preset == "sr" else None)
            t0 = time.perf_counter()
            whole = jpmap(y, op, prior, cfg).estimate.clamp(0, 1)
            t1 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                out = restore_tiled(y[0], op, args.prior, cfg, Path(tmp) / "x.npy", tile=max(1, args.tile // scale),
                                    tiles_per_batch=16)
                tiled = torch.from_numpy(np.load(out)).permute(2, 0, 1)[None].double().clamp(0, 1)
            t2 = time.perf_counter()
            halo = default_halo(op, prior.multiple, cfg.gamma)
            grid = TileGrid(s // scale, s // scale, max(1, args.tile // scale), halo, scale, is_circular(op),
                            prior.multiple)
            pw, pt = psnr(whole, x), psnr(tiled, x)
            diffs.append(pt - pw)
            print(f"| {name} | {label} | {cfg.max_iters} | {halo} | {len(grid)} | {pw:.2f} | {pt:.2f} | {pt - pw:+.3f} | "
                  f"{psnr(tiled, whole):.1f} | {seam_ratio(tiled, grid):.3f} / {seam_ratio(whole, grid):.3f} | "
                  f"{t1 - t0:.1f} / {t2 - t1:.1f} |", flush=True)
    print(f"largest |diff|: {max(abs(d) for d in diffs):.3f} dB over {len(diffs)} runs")


if __name__ == "__main__":
    main()
