"""A small copy of a face folder for a GPU call: each image centre-squared, resized, saved as JPEG under its own name.

    python benchmarks/pack_faces.py ../shared/data/train/faces-UTKFace .carry/faces64      # 23,317 faces, about 47 MB

The device tool carries at most 64 MiB, and UTKFace is 176 MB at 200x200. At 64x64, JPEG quality 90 is about
2 KB a face, and PNG about 7.7 KB, which would not fit. The training config resizes to 64 anyway. The names and
the relative paths are kept, so the validation split, a hash of the relative path (data.patches.split_files),
holds the same faces as the original folder's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data.patches import list_images  # noqa: E402


def pack(src: Path, dst: Path, size: int, quality: int) -> tuple[int, int]:
    """Writes every image of ``src`` to ``dst`` (same relative path); returns (images written, bytes)."""
    files = list_images(src)
    if not files:
        raise SystemExit(f"error: no images in {src}; give the face folder (e.g. ../shared/data/train/faces-UTKFace)")
    written = total = 0
    for f in files:
        out = dst / Path(f).relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            im.crop(box).resize((size, size), Image.BILINEAR).save(out, "JPEG", quality=quality)
        written += 1
        total += out.stat().st_size
    return written, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--quality", type=int, default=90)
    args = p.parse_args()
    if args.dst.resolve() == args.src.resolve():
        raise SystemExit("error: dst is src; give another folder (e.g. .carry/faces64)")
    n, size = pack(args.src, args.dst, args.size, args.quality)
    print(f"{n} images, {size / 2**20:.1f} MiB in {args.dst}")


if __name__ == "__main__":
    main()
