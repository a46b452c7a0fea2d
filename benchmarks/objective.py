"""Which solver reaches the lower joint objective J(x, z): PnP-HVAE (JPMAP) or Adam on J, on the same images.

    python benchmarks/objective.py --limit 4 --crop 128 --tasks sr2 sr4 [--then-adam 100]

J(x, z) = ||A x - y||^2 / (2 sigma^2) + ||x - G(z)||^2 / (2 gamma^2) - log p_tau(z) (restore/jpmap.py), per pixel,
with each task's restore.py preset (gamma, tau, iterations) and the protocol's degraded images of
``benchmarks/quality.py`` (same seeds). JPMAP runs its preset's iterations exactly (no tolerance stop, no divergence
guard); its pair is (x_K, z_K = E_tau(x_{K-1})), the last z-step and the x-step after it. Adam's pair is its last
evaluated iterate (its history's terms, computed before its last step). ``--then-adam N`` also runs N Adam steps
from JPMAP's x_K (z_0 = E_1(x_K), as Adam starts): if J still falls a lot, JPMAP's end point is not a stationary
point of J.
-log p_tau(z) is in full, normalisers included (the prior's scales depend on the coarser latents, so they differ
between the two end points too).
Prints, per task, the mean J of each and the PSNRs of the estimates the preset returns (x, or G(z)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quality import (SHARED, build_settings, hvae_settings, load_images, observation,  # noqa: E402
                                psnr)
from hvae.export import load_prior  # noqa: E402
from restore.baselines import AdamConfig, adam_joint, joint_terms  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap, z_step  # noqa: E402
from restore.presets import read_presets  # noqa: E402


@torch.no_grad()
def objective(y, op, prior, x, latents, taus, gamma) -> tuple[float, float, float]:
    """(data, coupling, -log p_tau(z)) per pixel of J at (x, z), batch mean."""
    data, coupling, log_p = joint_terms(y, op, prior, x, latents, taus, gamma)
    n_pix = x[0].numel()
    return float(data.mean()) / n_pix, float(coupling.mean()) / n_pix, float(-log_p.mean()) / n_pix


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=SHARED / "test" / "CBSD68")
    p.add_argument("--kernels", type=Path, default=SHARED / "kernels")
    p.add_argument("--prior", default=str(ROOT / "priors" / "natural.pt"))
    p.add_argument("--preset", default=str(ROOT / "configs" / "restore" / "natural.yaml"))
    p.add_argument("--tasks", nargs="+", default=["sr2", "sr4"], choices=["deblur", "sr2", "sr4"])
    p.add_argument("--deblur-kernels", type=int, nargs="+", default=[9])
    p.add_argument("--deblur-noises", type=float, nargs="+", default=[7.65])
    p.add_argument("--sr-noise", type=float, default=2.55)
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--adam-iters", type=int, default=100)
    p.add_argument("--adam-lr", type=float, default=0.01)
    p.add_argument("--then-adam", type=int, default=0, help="Adam steps from JPMAP's end point (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    # what quality.hvae_settings reads: the preset, no overrides
    args.preset_values = read_presets(args.preset)
    args.gamma = args.tau = args.iters = args.return_estimate = None
    settings = build_settings(args.tasks, args.kernels, args.deblur_kernels, args.deblur_noises, args.sr_noise)
    images = load_images(args.folder, args.limit, args.crop, None)
    rows = []
    for setting in settings:
        hv = hvae_settings(args, setting)
        gamma = hv["gamma"] / 255
        common = dict(gamma=gamma, tau=hv["tau"], tau_end=hv["tau_end"], return_estimate=hv["return"])
        taus = JPMAPConfig(**common).taus(prior.num_groups)
        for index, name, clean in images:
            op, y = observation(setting, clean[None], args.seed + index, torch.device("cpu"))
            iterates = []
            r = jpmap(y, op, prior, JPMAPConfig(max_iters=int(hv["iterations"]), tol=0.0, divergence_guard=None,
                                                **common), callback=lambda k, x: iterates.append(x))
            x_prev = iterates[-2] if len(iterates) > 1 else op.init(y)
            latents, _ = z_step(prior, x_prev, taus)
            j_jpmap = objective(y, op, prior, r.x, latents, taus, gamma)
            a = adam_joint(y, op, prior, AdamConfig(lr=args.adam_lr, max_iters=args.adam_iters, **common))
            h = a.history
            j_adam = (h.data_term[-1], h.coupling_term[-1], h.prior_term[-1])
            row = {"task": setting.task, "setting": setting.name, "image": name, "iters": r.iterations,
                   "J_jpmap": sum(j_jpmap), "J_adam": sum(j_adam), "psnr_jpmap": psnr(r.estimate, clean[None]),
                   "psnr_adam": psnr(a.estimate, clean[None]), "terms_jpmap": j_jpmap, "terms_adam": j_adam}
            if args.then_adam:
                b = adam_joint(y, op, prior, AdamConfig(lr=args.adam_lr, max_iters=args.then_adam, **common), x0=r.x)
                hb = b.history
                row["J_then_adam"] = hb.data_term[-1] + hb.coupling_term[-1] + hb.prior_term[-1]
                row["psnr_then_adam"] = psnr(b.estimate, clean[None])
            rows.append(row)
            extra = (f" | then Adam: J {row['J_then_adam']:.3f}, {row['psnr_then_adam']:.2f} dB"
                     if args.then_adam else "")
            print(f"{setting.task} {setting.name} {name}: J jpmap {row['J_jpmap']:.3f} "
                  f"({', '.join(f'{t:.3f}' for t in j_jpmap)}), adam {row['J_adam']:.3f} "
                  f"({', '.join(f'{t:.3f}' for t in j_adam)}); PSNR {row['psnr_jpmap']:.2f} / {row['psnr_adam']:.2f}"
                  f"{extra}", flush=True)
    print("| task | images | J JPMAP | J Adam | Adam lower on | PSNR JPMAP | PSNR Adam |"
          + (" J then Adam | PSNR then Adam |" if args.then_adam else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.then_adam else ""))
    for task in dict.fromkeys(r["task"] + " " + r["setting"] for r in rows):
        sel = [r for r in rows if r["task"] + " " + r["setting"] == task]
        m = lambda k: sum(r[k] for r in sel) / len(sel)  # noqa: E731
        line = (f"| {task} | {len(sel)} | {m('J_jpmap'):.3f} | {m('J_adam'):.3f} | "
                f"{sum(r['J_adam'] < r['J_jpmap'] for r in sel)} | {m('psnr_jpmap'):.2f} | {m('psnr_adam'):.2f} |")
        if args.then_adam:
            line += f" {m('J_then_adam'):.3f} | {m('psnr_then_adam'):.2f} |"
        print(line)
    return rows


if __name__ == "__main__":
    main()
