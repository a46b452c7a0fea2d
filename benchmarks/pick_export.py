"""Export the better of a checkpoint's EMA and raw weights, judged on the validation split.

python benchmarks/pick_export.py CKPT DATA_FOLDER OUT.pt [--images 256] [--image-size 64]

For short runs (a CPU run of a thousand steps) an EMA whose horizon is a large part of the run still averages
in the first, poor weights; this compares both on the same validation images (the data module's own split,
fixed posterior-sample seed) and exports the one with the lower bits/dim, in half precision.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data.faces import FaceDataModule  # noqa: E402
from hvae.config import HVAEConfig  # noqa: E402
from hvae.export import export_prior  # noqa: E402
from hvae.model import HierarchicalVAE  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    ck = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    cfg = HVAEConfig.from_dict(ck["hvae_config"])
    dm = FaceDataModule(args.data, image_size=args.image_size, batch_size=32)
    dm.setup("fit")
    val = torch.stack([dm.val_set[i] for i in range(min(args.images, len(dm.val_set)))])
    best = None
    for prefix in ("ema.", "model."):
        model = HierarchicalVAE(cfg).eval()
        model.load_state_dict({k[len(prefix):]: v for k, v in ck["state_dict"].items() if k.startswith(prefix)})
        with torch.no_grad():
            nats = torch.cat([model.elbo(b, torch.Generator().manual_seed(0)).nats_per_dim for b in val.split(64)])
        bpd = float(nats.mean()) / math.log(2)
        print(f"{prefix[:-1]} weights: {bpd:.3f} bits/dim on {len(val)} validation images (step {ck['global_step']})")
        if best is None or bpd < best[0]:
            best = (bpd, prefix, model)
    export_prior(best[2], args.out, half=True)
    print(f"exported the {best[1][:-1]} weights to {args.out}: {best[0]:.3f} bits/dim")


if __name__ == "__main__":
    main()
