"""Aligned face images: CelebA (torchvision layout), a folder, ``hf:NAME`` or ``imagefolder:PATH``.

Images are centre-cropped to the largest square and resized (antialiased bilinear) to
``image_size``; training adds random horizontal flips. Randomness, epochs and bad files
follow the policy described in :mod:`data.patches`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .images import DEFAULT_MAX_PIXELS, DataError, _one_line, convert_channels, image_from_pil, list_images, to_float
from .patches import EpochSampler, SafeImageList, loader_kwargs, sample_generator, split_files, split_keys

_NOT_FOUND = "give a CelebA root (torchvision layout), a folder of aligned faces, hf:NAME or imagefolder:PATH"


def square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop a CHW float image to its largest square and resize it to size x size (antialiased)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    if s == size:
        return x
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp_(0, 1)


class FaceDataset(Dataset):
    """Square face images (float32 CHW in [0, 1]); bad items are skipped and counted in ``skipped``."""

    def __init__(
        self,
        sources: Sequence,
        image_size: int = 64,
        channels: int = 3,
        augment: bool = False,
        seed: int = 0,
        reader=None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.images = SafeImageList(sources, cache_size=0, max_pixels=max_pixels, reader=reader)
        self.image_size, self.channels, self.augment, self.seed = image_size, channels, augment, seed

    @property
    def skipped(self) -> set[str]:
        return self.images.skipped

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            raise IndexError(index)
        epoch, i = divmod(int(index), len(self.images))  # virtual indices from EpochSampler
        _, img = self.images.get(i)
        x = convert_channels(square_resize(to_float(img), self.image_size), self.channels)
        if self.augment and torch.randint(2, (1,), generator=sample_generator(self.seed, epoch, i)).item():
            x = x.flip(-1)
        return x.contiguous()


class HFImageReader:
    """Reads item ``i`` of a Hugging Face dataset column as a native-channel CHW float tensor."""

    def __init__(self, dataset, key: str, name: str):
        self.dataset, self.key, self.name = dataset, key, name

    def __call__(self, index: int) -> torch.Tensor:
        try:
            value = self.dataset[int(index)][self.key]
            if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
                import io

                from PIL import Image

                value = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
            return image_from_pil(value)
        except Exception as e:
            raise DataError(f"cannot read image {self.name}[{index}]: {_one_line(e)}") from e


@contextlib.contextmanager
def _hf_offline(offline: bool):
    """Force Hugging Face offline mode (env and the already-imported config flags) for one call."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def load_hf_images(name: str, split: str, image_key: str, download: bool, **kwargs):
    """``datasets.load_dataset(name, split=split, **kwargs)`` reduced to its image column; offline unless download."""
    how = "" if download else " offline"
    try:
        import datasets  # lazily: the GPU machine may lack it
    except ImportError:
        raise DataError(f"cannot load Hugging Face dataset {name}: the datasets package is not installed; give a folder of images") from None
    try:
        with _hf_offline(not download):
            ds = datasets.load_dataset(name, split=split, **kwargs)
    except Exception as e:
        reason = _one_line(e)[:300]
        raise DataError(f"cannot load Hugging Face dataset {name}{how}: {reason}; pass download: true, or give a folder of images") from e
    if image_key not in ds.column_names:
        raise DataError(f"Hugging Face dataset {name} has no column {image_key!r} (columns: {', '.join(ds.column_names)}); set hf_image_key")
    return ds.select_columns([image_key])


def celeba_dir(root: Path) -> Path | None:
    """The folder holding ``img_align_celeba`` for a torchvision-layout root (``root/celeba``) or the celeba folder itself."""
    for d in (root / "celeba", root):
        if (d / "img_align_celeba").is_dir():
            return d
    return None


def celeba_partition(folder: Path) -> dict[str, int] | None:
    """File name -> official partition (0 train, 1 valid, 2 test) from list_eval_partition.txt (or Kaggle's .csv)."""
    for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
        if (folder / name).is_file():
            sep = "," if name.endswith(".csv") else None  # names may contain spaces: split at the last separator
            parts = (line.strip().rsplit(sep, 1) for line in (folder / name).read_text().splitlines())
            return {p[0].strip(): int(p[1]) for p in parts if len(p) == 2 and p[1].strip() in ("0", "1", "2")}
    return None


class FaceDataModule(L.LightningDataModule):
    """Face images for training an HVAE prior; see the module docstring for the accepted sources.

    Validation: CelebA's official partition (train 0 / valid 1) when list_eval_partition is
    present, else a hash split of the files (or dataset rows) by ``val_fraction``. Nothing is
    downloaded unless ``download=True`` (``hf:`` datasets, or CelebA via torchvision into an
    empty or missing folder whose path contains "celeba").
    """

    def __init__(
        self,
        source: str,
        image_size: int = 64,
        channels: int = 3,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
        hf_split: str = "train",
        hf_image_key: str = "image",
        download: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.source, self.image_size, self.channels, self.batch_size = str(source), image_size, channels, batch_size
        self.val_fraction, self.num_workers, self.seed = val_fraction, num_workers, seed
        self.hf_split, self.hf_image_key, self.download = hf_split, hf_image_key, download
        self.train_set: FaceDataset | None = None
        self.val_set: FaceDataset | None = None

    def _hf_sources(self, name: str, **kwargs) -> tuple[list, list, HFImageReader]:
        ds = load_hf_images(name, self.hf_split, self.hf_image_key, self.download, **kwargs)
        if len(ds) == 0:
            raise DataError(f"Hugging Face dataset {name} split {self.hf_split} is empty; choose another hf_split")
        train, val = split_keys([str(i) for i in range(len(ds))], self.val_fraction, self.seed)
        return train, val, HFImageReader(ds, self.hf_image_key, name)

    def _folder_sources(self, root: Path) -> tuple[list, list]:
        folder = celeba_dir(root)
        if folder is None:
            return split_files(list_images(root), self.val_fraction, self.seed, root=root)
        files = list_images(folder / "img_align_celeba")
        partition = celeba_partition(folder)
        if partition:
            train = [f for f in files if partition.get(f.name) == 0]
            val = [f for f in files if partition.get(f.name) == 1]
            if train and val:
                return train, val
            warnings.warn(f"{folder} has a partition file that does not match its images; splitting by file name hash")
        return split_files(files, self.val_fraction, self.seed, root=folder)

    def sources(self) -> tuple[list, list, HFImageReader | None]:
        s = self.source
        if s.startswith("hf:"):
            return self._hf_sources(s[3:])
        if s.startswith("imagefolder:"):
            path = Path(s[len("imagefolder:") :]).expanduser()
            if not path.is_dir():
                raise DataError(f"face source {s} not found: {path} is not a folder; {_NOT_FOUND}")
            return self._hf_sources("imagefolder", data_dir=str(path))
        root = Path(s).expanduser()
        wants_celeba = "celeba" in root.as_posix().lower() and celeba_dir(root) is None
        if self.download and wants_celeba and not (root.is_dir() and any(root.iterdir())):  # fetch CelebA via torchvision
            self._download_celeba(root)
        if not root.is_dir():
            raise DataError(f"face source {s} not found: {_NOT_FOUND}")
        return (*self._folder_sources(root), None)

    @staticmethod
    def _download_celeba(root: Path) -> None:
        from torchvision.datasets import CelebA

        try:
            CelebA(str(root), split="all", target_type=[], download=True)
        except Exception as e:
            raise DataError(f"cannot download CelebA into {root}: {_one_line(e)[:300]}; download it by hand (torchvision layout)") from e

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, reader = self.sources()
        common = dict(image_size=self.image_size, channels=self.channels, seed=self.seed, reader=reader)
        self.train_set = FaceDataset(train, augment=True, **common)
        self.val_set = FaceDataset(val or train, augment=False, **common)
        if len(self.train_set) < self.batch_size:
            raise DataError(f"face source {self.source} has {len(self.train_set)} training images, fewer than batch_size {self.batch_size}")

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = EpochSampler(len(self.train_set), self.seed)
        return DataLoader(self.train_set, self.batch_size, sampler=sampler, drop_last=True, **loader_kwargs(self.num_workers))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_set, self.batch_size, shuffle=False, **loader_kwargs(self.num_workers))
