"""Large images read box by box: ``.npy`` (memory-mapped), TIFF (memory-mapped when uncompressed), or any
format of :mod:`data.images` (read whole). Only the requested box is converted to float.

An :class:`ImageSource` is a ``[C, H, W]`` image whose ``read(box)`` returns that box as float32 in [0, 1]
(8/16-bit integers scaled, floats as stored), periodically continued when the box leaves the image.
Sources pickle without their pixels (files are reopened in the receiving process), so they travel cheaply
to spawned workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data.images import DEFAULT_MAX_PIXELS, DataError, read_image_with_info

from .assemble import release
from .operators.grey import equal_channels
from .tiling import Box, cut, wrap_segments

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.bool_): 1.0}


class ImageSource:
    """Base class: ``shape`` (C, H, W), ``bit_depth`` (8, 16 or 32), ``read(box) -> [C, h, w]`` float32."""

    shape: tuple[int, int, int]
    bit_depth: int = 8

    def read(self, box: Box) -> Tensor:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the pixels cheaply (path, size, mtime), for resuming a run."""
        raise NotImplementedError


class TensorSource(ImageSource):
    """An in-memory [C, H, W] (or [1, C, H, W]) tensor."""

    def __init__(self, x: Tensor, bit_depth: int = 8, path: str | os.PathLike | None = None) -> None:
        x = x[0] if x.ndim == 4 and x.shape[0] == 1 else x
        x = x[None] if x.ndim == 2 else x
        if x.ndim != 3:
            raise DataError(f"expected an image tensor [C, H, W], got shape {tuple(x.shape)}")
        self.x = x.detach().cpu()
        self.shape = tuple(self.x.shape)
        self.bit_depth = bit_depth
        self.path = None if path is None else Path(path)  # the file it was read from, if any

    def read(self, box: Box) -> Tensor:
        return cut(self.x, box).float().clone()

    def fingerprint(self) -> str:
        import hashlib

        if self.path is not None:
            st = self.path.stat()
            return f"file:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        a = np.ascontiguousarray(self.x.numpy())
        return f"tensor:{a.dtype}:{a.shape}:{hashlib.sha1(a.view(np.uint8).reshape(-1)).hexdigest()}"


class GreyOfColour(ImageSource):
    """A grey image stored in equal colour channels, read as its one grey channel (:func:`grey_if_equal`)."""

    def __init__(self, source: ImageSource) -> None:
        self.source, self.bit_depth = source, source.bit_depth
        self.shape = (1, *source.shape[1:])

    def read(self, box: Box) -> Tensor:
        return self.source.read(box)[:1]

    def fingerprint(self) -> str:
        return self.source.fingerprint() + ":grey"


def grey_if_equal(source: ImageSource, side: int = 1024) -> ImageSource:
    """``source`` as :class:`GreyOfColour` when all its channels are equal (read box by box, ``side`` pixels a side,
    up to the first box that differs), else ``source`` itself."""
    c, h, w = source.shape
    if c == 1:
        return source
    for top in range(0, h, side):
        for left in range(0, w, side):
            if not equal_channels(source.read(Box(top, min(top + side, h), left, min(left + side, w)))):
                return source
    return GreyOfColour(source)


class ArraySource(ImageSource):
    """A ``.npy`` or TIFF file, memory-mapped read-only when possible (else its native array, not floats).

    ``.npy`` layouts: [H, W], [H, W, C], [C, H, W] or [1, C, H, W]; C in 1..4 (alpha dropped)."""

    def __init__(self, path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.path, self.max_pixels = Path(path), max_pixels
        self._array = None
        a = self._open()
        if a.dtype.kind not in "uifb":
            raise DataError(f"cannot read image {self.path}: unsupported sample type {a.dtype}")
        self._layout, c, h, w = _layout(a.shape, self.path)
        if max_pixels is not None and h * w > max_pixels:
            raise DataError(f"image {self.path} has {w}x{h} pixels, over the limit of {max_pixels}; "
                            "pass a larger max_pixels (--max-pixels) if this is intended")
        self.shape = ({1: 1, 2: 1, 3: 3, 4: 3}[c], int(h), int(w))
        self.bit_depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(a.dtype, 32)

    def _open(self):
        if self._array is None:
            if not self.path.is_file():
                raise DataError(f"cannot read image {self.path}: file does not exist")
            try:
                self._array = _open_array(self.path, self.max_pixels)
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001 - any decoder failure is reported the same way
                raise DataError(f"cannot read image {self.path}: {' '.join(str(e).split()) or type(e).__name__}") from e
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    def read(self, box: Box) -> Tensor:
        a, (C, H, W) = self._open(), self.shape
        blocks = []
        for r0, r1 in wrap_segments(box.r0, box.r1, H):
            row = []
            for c0, c1 in wrap_segments(box.c0, box.c1, W):
                if self._layout == "HWC":
                    part = np.asarray(a[r0:r1, c0:c1, :C]).transpose(2, 0, 1)
                elif self._layout == "HW":
                    part = np.asarray(a[r0:r1, c0:c1])[None]
                else:
                    part = np.asarray(a[..., :C, r0:r1, c0:c1]).reshape(C, r1 - r0, c1 - c0)
                row.append(part)
            blocks.append(np.concatenate(row, axis=-1))
        block = np.concatenate(blocks, axis=-2)
        release(a)  # keep resident memory bounded by the tile, not by the part of the file visited
        out = torch.from_numpy(block.astype(np.float32))
        scale = _SCALE.get(block.dtype)
        return out / scale if scale not in (None, 1.0) else out

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"file:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _open_array(path: Path, max_pixels: int | None):
    if path.suffix.lower() == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes, shape = tif.series[0].axes, tif.series[0].shape
    try:
        a = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed or not contiguous: decode once, keep the native (compact) dtype
        h, w = shape[axes.index("Y")], shape[axes.index("X")]
        if max_pixels is not None and h * w > max_pixels:
            raise DataError(f"image {path} has {w}x{h} pixels, over the limit of {max_pixels}; "
                            "pass a larger max_pixels (--max-pixels) if this is intended") from None
        a = tifffile.imread(path)
    if axes.endswith("SYX") or axes.endswith("CYX"):
        a = a.reshape(a.shape[-3:])  # planar: [C, H, W]
    elif axes.endswith("YXS"):
        a = a.reshape(a.shape[-3:])
    elif axes.endswith("YX"):
        a = a.reshape(a.shape[-2:])
    else:
        raise DataError(f"cannot read image {path}: unsupported TIFF layout {axes}")
    return a


def _layout(shape: tuple, path: Path) -> tuple[str, int, int, int]:
    """("HW" | "HWC" | "CHW", channels, height, width) of an array shape ([1, C, H, W] counts as CHW)."""
    s = tuple(shape[1:]) if len(shape) == 4 and shape[0] == 1 else tuple(shape)
    if len(s) == 2:
        return "HW", 1, s[0], s[1]
    if len(s) == 3 and s[-1] <= 4 and (s[0] > 4 or s[0] not in (1, 3)):
        return "HWC", s[2], s[0], s[1]
    if len(s) == 3 and s[0] <= 4:
        return "CHW", s[0], s[1], s[2]
    raise DataError(f"cannot read image {path}: array of shape {tuple(shape)} is not [H, W], [H, W, C] or "
                    "[C, H, W] with 1 to 4 channels")


def open_image(y: str | os.PathLike | Tensor | ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageSource:
    """An :class:`ImageSource` for a path (.npy, .tif/.tiff memory-mapped; other formats read whole through
    :func:`data.images.read_image_with_info`), a tensor [C, H, W], or a source (returned as is)."""
    if isinstance(y, ImageSource):
        return y
    if isinstance(y, Tensor):
        return TensorSource(y)
    path = Path(y)
    if path.suffix.lower() in (".npy", ".tif", ".tiff"):
        try:
            return ArraySource(path, max_pixels)
        except DataError:
            if path.suffix.lower() == ".npy":
                raise
    x, info = read_image_with_info(path, max_pixels=max_pixels)  # ordinary sizes: PNG, JPEG, odd TIFFs
    return TensorSource(x, bit_depth=info.bit_depth, path=path)
