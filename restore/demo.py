"""``python restore.py`` with no argument: scikit-image's astronaut, motion blur and noise, the shipped prior.

Prints the PSNR of the degraded input, of a Wiener (Tikhonov) baseline and of PnP-HVAE, and writes
``out/demo/side_by_side.png`` (clean | degraded | Wiener | PnP-HVAE).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from data.images import write_image
from hvae.export import PriorError, load_prior

from .baselines import tikhonov
from .cli import UsageError, apply_preset, build_parser, solver_config
from .jpmap import JPMAPConfig, jpmap
from .operators import Blur, motion_kernel, sigma_from_255

PRIOR = Path(__file__).resolve().parent.parent / "priors" / "natural.pt"
NOISE_255 = 7.65


def demo_config(max_iters: int | None = None) -> JPMAPConfig:
    """What ``restore.py --operator blur --noise-std 7.65`` would run (its default preset's blur entry at that
    noise), built by the same functions; ``max_iters`` overrides the preset's iterations."""
    args = build_parser().parse_args(["--operator", "blur", "--noise-std", str(NOISE_255)])
    apply_preset(args)
    args.iterations = max_iters or args.iterations
    return solver_config(args)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(-10 * torch.log10(((x.clamp(0, 1) - ref) ** 2).mean()))


def demo(out: Path = Path("out/demo"), size: int = 192, max_iters: int | None = None) -> int:
    torch.manual_seed(0)
    try:
        config = demo_config(max_iters)
        prior = load_prior(PRIOR)
    except (PriorError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import skimage.data
    image = torch.from_numpy(skimage.data.astronaut().copy()).permute(2, 0, 1).float() / 255  # 512 x 512 RGB
    top, left = 20, 150
    clean = image[:, top: top + size, left: left + size][None].double()
    kernel = motion_kernel(size=17, length=13, angle_deg=30.0)
    operator = Blur(kernel, sigma_from_255(NOISE_255))
    y = operator.degrade(clean, generator=torch.Generator().manual_seed(0)).float()
    print(f"demo: {size}x{size} crop of scikit-image's astronaut, motion blur (length 13 px), noise {NOISE_255}/255")
    wiener = tikhonov(y, operator, grad_std=0.1).estimate
    start = time.perf_counter()
    result = jpmap(y, operator, prior, config)
    seconds = time.perf_counter() - start
    clean = clean.float()
    print(f"PSNR degraded  {psnr(y, clean):6.2f} dB")
    print(f"PSNR Wiener    {psnr(wiener, clean):6.2f} dB")
    print(f"PSNR PnP-HVAE  {psnr(result.estimate, clean):6.2f} dB  ({result.iterations} iterations, {seconds:.1f} s, "
          f"final residual {result.history.residual[-1]:.2e})")
    panel = torch.cat([clean, y, wiener, result.estimate], dim=-1)[0].clamp(0, 1)
    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "side_by_side.png", panel)
    print(f"wrote {out / 'side_by_side.png'} (clean | degraded | Wiener | PnP-HVAE)")
    return 0
