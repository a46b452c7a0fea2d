"""Reading, writing and listing images.

Every image leaving this module is a float32 CHW tensor in [0, 1] with 1 (grey) or
3 (RGB) channels. Problems the user must fix raise :class:`DataError` with a one-line
message naming the path. Writes are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DEFAULT_MAX_PIXELS = 1_000_000_000 // 4  # 250 MP: guard against decompression bombs
_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}
_PIL_LOCK = threading.Lock()
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DataError(ValueError):
    """An error in the data (or its configuration) that the user must fix."""


@dataclass(frozen=True)
class ImageInfo:
    bit_depth: int  # 8, 16 or 32 (float)
    channels: int  # native channel count after dropping alpha: 1 or 3
    height: int
    width: int


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _check_size(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(
            f"image {path} has {width}x{height} pixels, over the limit of {max_pixels}; "
            "pass a larger max_pixels (--max-pixels) if this is intended"
        )


# ---------------------------------------------------------------- channels / dtypes
def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 / 255; anything else -> float32 (assumed already in [0, 1])."""
    y = x.to(torch.float32, copy=True)  # always a copy: callers may modify it in place
    return y.div_(255) if x.dtype == torch.uint8 else y


def convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """CHW float: RGB -> grey (ITU-R 601 luma), grey -> RGB (replicated), None keeps."""
    if channels is None or x.shape[-3] == channels:
        return x
    if channels == 1 and x.shape[-3] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        return (x * w.view(3, 1, 1)).sum(-3, keepdim=True).clamp_(0, 1)
    if channels == 3 and x.shape[-3] == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    raise DataError(f"cannot convert an image with {x.shape[-3]} channels to {channels}; use channels 1 or 3")


# ---------------------------------------------------------------- minimal 16-bit PNG codec
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode_png16(a: np.ndarray) -> bytes:
    """HWC uint16 (C = 1 or 3) -> 16-bit PNG bytes (filter type 0 on every row)."""
    h, w, c = a.shape
    rows = np.ascontiguousarray(a, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 6)) + _png_chunk(b"IEND", b"")


def _unfilter_slow(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for x in range(len(cur)):
        a = cur[x - bpp] if x >= bpp else 0
        b, c = up[x], (up[x - bpp] if x >= bpp else 0)
        if kind == 3:
            pred = (a + b) >> 1
        else:  # Paeth
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        cur[x] = (cur[x] + pred) & 255
    return np.frombuffer(bytes(cur), np.uint8)


def _decode_png16(data: bytes) -> np.ndarray:
    """Non-interlaced 16-bit PNG (grey, grey+alpha, RGB, RGBA) -> HWC uint16 (Pillow truncates these to 8 bit)."""
    w, h, _, ctype, _, _, _ = struct.unpack(">IIBBBBB", data[16:29])
    bpp = 2 * {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    pos, idat = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    raw, stride = zlib.decompress(b"".join(idat)), w * bpp
    if len(raw) < h * (stride + 1):
        raise ValueError("image data is truncated")
    rows = np.frombuffer(raw, np.uint8, count=h * (stride + 1)).reshape(h, stride + 1)
    out, prev = np.empty((h, stride), np.uint8), np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = int(rows[y, 0]), rows[y, 1:]
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: running sum per byte lane, wrapping mod 256
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):
            cur = _unfilter_slow(kind, line, prev, bpp)
        else:
            raise ValueError(f"bad PNG filter type {kind}")
        out[y], prev = cur, cur
    return out.view(">u2").reshape(h, w, bpp // 2).astype(np.uint16)


# ---------------------------------------------------------------- reading
def _from_pil(im: Image.Image) -> tuple[np.ndarray, int]:
    """PIL image -> (HWC array: uint8, or float32 in [0, 1]; bit depth)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return (np.asarray(im).astype(np.float32) / 65535).clip(0, 1)[..., None], 16
    if im.mode == "F":
        return np.nan_to_num(np.asarray(im, np.float32)).clip(0, 1)[..., None], 32
    im = im.convert("L") if im.mode in ("1", "L", "LA", "La") else im.convert("RGB") if im.mode != "RGB" else im
    a = np.array(im, np.uint8)  # a writable copy
    return (a[..., None] if a.ndim == 2 else a), 8


def _native_array(a: np.ndarray) -> tuple[np.ndarray, int]:
    """tifffile / decoder HWC array -> (uint8 or float32 in [0, 1], bit depth)."""
    if a.dtype == np.uint8:
        return a, 8
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255, 8
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535, 16
    if a.dtype.kind == "f":
        return np.nan_to_num(a.astype(np.float32)).clip(0, 1), 32
    raise ValueError(f"unsupported sample type {a.dtype}")


def _read_tiff(path: Path, max_pixels: int | None) -> tuple[np.ndarray, int]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_size(path, page.imagewidth, page.imagelength, max_pixels)
        a, axes = page.asarray(), page.axes
    if axes.startswith("S") and a.ndim == 3:
        a = np.moveaxis(a, 0, -1)
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3:
        raise ValueError(f"unsupported TIFF layout {axes} {a.shape}")
    return _native_array(a)


def _read_pil(path: Path, max_pixels: int | None) -> tuple[np.ndarray, int]:
    with _PIL_LOCK:  # our own limit replaces Pillow's (lower) one while the header is parsed
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        _check_size(path, im.width, im.height, max_pixels)
        if im.format == "PNG":
            with open(path, "rb") as f:
                head = f.read(29)
            if head[24] == 16 and head[25] in (2, 4, 6) and head[28] == 0:  # 16-bit colour / alpha
                return _native_array(_decode_png16(path.read_bytes()))
        im.load()
        return _from_pil(im)


def load_image_compact(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, ImageInfo]:
    """Native-channel CHW tensor: uint8 for 8-bit files (4x less memory to cache), else float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot read image {path}: {'it is a directory' if path.is_dir() else 'file does not exist'}")
    if path.stat().st_size == 0:
        raise DataError(f"cannot read image {path}: file is empty")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                a, depth = _read_tiff(path, max_pixels)
            except DataError:
                raise
            except Exception as tiff_error:
                try:
                    a, depth = _read_pil(path, max_pixels)
                except DataError:
                    raise
                except Exception:
                    raise tiff_error from None
        else:
            a, depth = _read_pil(path, max_pixels)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read image {path}: {_one_line(e) if str(e) else type(e).__name__}") from e
    if a.shape[-1] in (2, 4):  # drop alpha
        a = a[..., : a.shape[-1] - 1]
    if a.shape[-1] not in (1, 3):
        raise DataError(f"cannot read image {path}: {a.shape[-1]} channels are not supported; convert it to grey or RGB")
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return x, ImageInfo(depth, x.shape[0], x.shape[1], x.shape[2])


def read_image_with_info(
    path: str | os.PathLike, channels: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[torch.Tensor, ImageInfo]:
    x, info = load_image_compact(path, max_pixels)
    return convert_channels(to_float(x), channels), info


def read_image(path: str | os.PathLike, channels: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """CHW float32 in [0, 1]; channels 1 / 3 converts, None keeps the native count."""
    return read_image_with_info(path, channels, max_pixels)[0]


def image_from_pil(im: Image.Image, channels: int | None = None) -> torch.Tensor:
    a, _ = _from_pil(im)
    a = a[..., : a.shape[-1] - 1] if a.shape[-1] in (2, 4) else a
    return convert_channels(to_float(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))), channels)


# ---------------------------------------------------------------- atomic writing
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path`` (".NAME.XXXX.tmp.EXT"); renamed onto ``path`` on success, removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_image(path: str | os.PathLike, img: torch.Tensor, bit_depth: int = 8) -> None:
    """Write a CHW (or 1CHW) image in [0, 1] atomically: png (8/16 bit), jpg, bmp, webp (8 bit), tif (8/16/32 bit)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise DataError(f"cannot write image {path}: unknown extension; use one of {', '.join(IMAGE_EXTENSIONS)}")
    is_tiff = suffix in (".tif", ".tiff")
    if bit_depth not in (8, 16, 32) or (bit_depth == 16 and suffix != ".png" and not is_tiff) or (bit_depth == 32 and not is_tiff):
        raise DataError(f"cannot write image {path} with bit_depth {bit_depth}; use 8, 16 (png/tif) or 32 (tif)")
    x = img.detach()
    x = x[0] if x.dim() == 4 and x.shape[0] == 1 else x[None] if x.dim() == 2 else x
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise DataError(f"cannot write image {path}: expected a CHW tensor with 1 or 3 channels, got shape {tuple(img.shape)}")
    a = torch.nan_to_num(x.float().cpu()).clamp(0, 1).permute(1, 2, 0).numpy()
    q = a.astype(np.float32) if bit_depth == 32 else np.round(a * (2**bit_depth - 1)).astype(np.uint8 if bit_depth == 8 else np.uint16)
    with atomic_path(path) as tmp:
        if is_tiff:
            import tifffile

            tifffile.imwrite(tmp, q if q.shape[-1] == 3 else q[..., 0], photometric="rgb" if q.shape[-1] == 3 else "minisblack")
        elif bit_depth == 16:
            with open(tmp, "wb") as f:
                f.write(_encode_png16(q))
        else:
            opts = {"quality": 95} if suffix in (".jpg", ".jpeg") else {"lossless": True} if suffix == ".webp" else {}
            Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q).save(tmp, format=_PIL_FORMATS[suffix], **opts)


# ---------------------------------------------------------------- listing / built-in images
def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, sorted, hidden files and folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}; give a folder of images")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; check the folder")
    return files


# scikit-image photographs shipped inside the wheel (no download); the last one is the validation image
_BUILTIN_NAMES = (
    "camera", "astronaut", "chelsea", "rocket", "immunohistochemistry", "coins", "moon",
    "grass", "gravel", "brick", "hubble_deep_field", "page", "text", "coffee",
)  # fmt: skip


@functools.cache
def _builtin_uint8() -> tuple[torch.Tensor, ...]:
    import skimage.data

    out = []
    for name in _BUILTIN_NAMES:
        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception:  # needs a download or missing in this version
            continue
        if a.dtype == np.uint8:
            a = a[..., None] if a.ndim == 2 else a[..., :3]
            out.append(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))))
    return tuple(out)


def builtin_images(channels: int = 3) -> list[torch.Tensor]:
    """scikit-image's bundled photographs as CHW float32 in [0, 1] (offline; at least 4)."""
    images = _builtin_uint8()
    if len(images) < 4:
        raise DataError(f"only {len(images)} built-in images load from scikit-image; give a folder of images instead of builtin")
    return [convert_channels(to_float(x), channels) for x in images]
