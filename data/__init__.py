"""Image data: reading/writing (images), natural-image patches (patches) and faces (faces)."""

from .images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DataError,
    ImageInfo,
    atomic_path,
    atomic_write_bytes,
    builtin_images,
    convert_channels,
    list_images,
    read_image,
    read_image_with_info,
    write_image,
)
from .faces import FaceDataModule, FaceDataset
from .patches import EpochSampler, PatchDataModule, PatchDataset, SafeImageList, split_files

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "EpochSampler",
    "FaceDataModule",
    "FaceDataset",
    "ImageInfo",
    "PatchDataModule",
    "PatchDataset",
    "SafeImageList",
    "atomic_path",
    "atomic_write_bytes",
    "builtin_images",
    "convert_channels",
    "list_images",
    "read_image",
    "read_image_with_info",
    "split_files",
    "write_image",
]

