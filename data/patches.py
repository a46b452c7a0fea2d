"""Random patches of natural images, and the helpers shared with faces.py.

Randomness. Every sample is drawn from its own ``torch.Generator`` seeded by
``(seed, epoch, index)``, so the same index always gives the same sample (validation
is fixed) and no global RNG state is used. Training loaders use :class:`EpochSampler`,
which yields *virtual* indices ``epoch * len(dataset) + i``: the epoch travels inside
the index, so it reaches worker processes (persistent or not) without shared state.
Lightning calls ``sampler.set_epoch(current_epoch)`` before each epoch, which also makes
resumed runs draw the same patches; without Lightning the sampler counts epochs itself.

Bad files. :class:`SafeImageList` reads images lazily; a file that cannot be read is
warned about once, added to ``skipped`` and replaced by the next good image. Only when
every image is bad does it raise :class:`DataError`. (With ``num_workers > 0`` each
worker keeps its own ``skipped`` set.)
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import DEFAULT_MAX_PIXELS, DataError, builtin_images, convert_channels, list_images, load_image_compact, to_float

Source = str | os.PathLike | torch.Tensor


def sample_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by a stable hash of integer keys (same across processes and runs)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(keys)}q", *keys), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)


def split_keys(keys: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split positions by a stable hash of each key: adding keys never moves the others."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} must be in [0, 1)")
    scores = [zlib.crc32(f"{seed}/{k}".encode()) / 2**32 for k in keys]
    val = {i for i, s in enumerate(scores) if s < val_fraction}
    if val_fraction > 0 and len(keys) >= 2 and not val:  # at least one validation item
        val.add(min(range(len(keys)), key=scores.__getitem__))
    if val and len(val) == len(keys):  # at least one training item
        val.discard(max(range(len(keys)), key=scores.__getitem__))
    return [i for i in range(len(keys)) if i not in val], sorted(val)


def split_files(
    files: Sequence[str | os.PathLike], val_fraction: float, seed: int = 0, root: str | os.PathLike | None = None
) -> tuple[list[Path], list[Path]]:
    """Deterministic (train, val) split by crc32 of the path relative to ``root`` (or the file name)."""
    paths = [Path(f) for f in files]
    keys = [p.relative_to(root).as_posix() if root is not None else p.name for p in paths]
    train, val = split_keys(keys, val_fraction, seed)
    return [paths[i] for i in train], [paths[i] for i in val]


class SafeImageList:
    """Images given as paths or tensors, read lazily (LRU cache) with bad files skipped and counted.

    ``get(i)`` returns ``(j, image)``: the native-channel CHW image (uint8 or float32, see
    ``load_image_compact``) of source ``j``, the first readable source at or after ``i``.
    ``reader`` replaces file reading (it must raise DataError for a bad item).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        cache_size: int = 64,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        reader: Callable[[object], torch.Tensor] | None = None,
    ):
        if len(sources) == 0:
            raise DataError("no images given; check the image folder")
        self.sources, self.cache_size, self.max_pixels, self.reader = list(sources), cache_size, max_pixels, reader
        self.skipped: set[str] = set()
        self._make_cache()

    def _make_cache(self) -> None:
        read = self.reader or (lambda key: load_image_compact(key, self.max_pixels)[0])
        self._read = functools.lru_cache(maxsize=self.cache_size)(read) if self.cache_size else read

    def __getstate__(self) -> dict:  # the cache is per process; do not pickle it to workers
        return {k: v for k, v in self.__dict__.items() if k != "_read"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_cache()

    def __len__(self) -> int:
        return len(self.sources)

    def get(self, index: int) -> tuple[int, torch.Tensor]:
        n = len(self.sources)
        for k in range(n):
            j = (index + k) % n
            src = self.sources[j]
            if isinstance(src, torch.Tensor):
                return j, src
            name = str(src)
            if name in self.skipped:
                continue
            try:
                return j, self._read(src)
            except DataError as e:
                self.skipped.add(name)
                warnings.warn(f"skipping unreadable image ({len(self.skipped)} so far): {e}", stacklevel=3)
        raise DataError(f"all {n} images are unreadable (e.g. {self.sources[0]}); check the image files")


class EpochSampler(Sampler[int]):
    """Shuffled virtual indices ``epoch * n + i`` (see the module docstring); epochs advance per pass."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        perm = torch.randperm(self.n, generator=sample_generator(self.seed, epoch, -1))
        return iter((perm + epoch * self.n).tolist())


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad (replicate for 1-pixel sides) a CHW image so both sides are >= size."""
    while x.shape[-2] < size or x.shape[-1] < size:
        h, w = x.shape[-2:]
        ph, pw = min(max(size - h, 0), h - 1), min(max(size - w, 0), w - 1)
        if (size > h and ph == 0) or (size > w and pw == 0):
            return F.pad(x[None].float(), (0, max(size - w, 0), 0, max(size - h, 0)), mode="replicate")[0].to(x.dtype)
        x = F.pad(x[None].float(), (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")[0].to(x.dtype)
    return x


class PatchDataset(Dataset):
    """``samples_per_epoch`` random ``patch_size`` crops of the given images (float32 CHW in [0, 1])."""

    def __init__(
        self,
        sources: Sequence[Source],
        patch_size: int = 64,
        channels: int = 3,
        samples_per_epoch: int = 10000,
        augment: bool = False,
        seed: int = 0,
        cache_size: int = 64,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if channels not in (1, 3) or patch_size < 1 or samples_per_epoch < 1:
            raise DataError(f"bad patch settings: channels {channels} (1 or 3), patch_size {patch_size}, samples {samples_per_epoch}")
        self.images = SafeImageList(sources, cache_size, max_pixels)
        self.patch_size, self.channels, self.samples_per_epoch = patch_size, channels, samples_per_epoch
        self.augment, self.seed, self.epoch = augment, seed, 0

    @property
    def skipped(self) -> set[str]:
        return self.images.skipped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __iter__(self):  # indices past len() are virtual (see EpochSampler); iteration stops at len()
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            raise IndexError(index)
        epoch, i = divmod(int(index), self.samples_per_epoch)
        g = sample_generator(self.seed, self.epoch + epoch, i)
        _, img = self.images.get(int(torch.randint(len(self.images), (1,), generator=g)))
        p = self.patch_size
        img = pad_to(img, p)
        top = int(torch.randint(img.shape[-2] - p + 1, (1,), generator=g))
        left = int(torch.randint(img.shape[-1] - p + 1, (1,), generator=g))
        patch = convert_channels(to_float(img[:, top : top + p, left : left + p]), self.channels)
        if self.augment:
            rot, flip = torch.randint(4, (2,), generator=g).tolist()
            patch = torch.rot90(patch, rot, (-2, -1))
            patch = patch.flip(-1) if flip % 2 else patch
        return patch.contiguous()


def loader_kwargs(num_workers: int) -> dict:
    return {
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }


class PatchDataModule(L.LightningDataModule):
    """Patches from a folder of images (split by file hash) or ``root="builtin"`` (scikit-image photos).

    Validation patches are fixed (same indices, no augmentation). When no validation file
    can be held out (a single image, or val_fraction 0) they come from the training images.
    """

    def __init__(
        self,
        root: str = "builtin",
        patch_size: int = 64,
        channels: int = 3,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        train_samples: int = 10000,
        val_samples: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        cache_size: int = 64,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.root, self.patch_size, self.channels, self.batch_size = root, patch_size, channels, batch_size
        self.val_fraction, self.train_samples, self.val_samples = val_fraction, train_samples, val_samples
        self.num_workers, self.seed, self.cache_size = num_workers, seed, cache_size
        self.train_set: PatchDataset | None = None
        self.val_set: PatchDataset | None = None

    def sources(self) -> tuple[list[Source], list[Source]]:
        if self.root == "builtin":
            images = builtin_images(self.channels)
            n_val = max(1, round(len(images) * self.val_fraction)) if self.val_fraction > 0 else 0
            return images[: len(images) - n_val], images[len(images) - n_val :]
        if not Path(self.root).is_dir():
            raise DataError(f"patch image folder {self.root} not found; give a folder of images or root: builtin")
        return split_files(list_images(self.root), self.val_fraction, self.seed, root=self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.train_samples < self.batch_size:
            raise DataError(f"train_samples {self.train_samples} is below batch_size {self.batch_size}; raise train_samples")
        train, val = self.sources()
        common = dict(patch_size=self.patch_size, channels=self.channels, cache_size=self.cache_size)
        self.train_set = PatchDataset(train, samples_per_epoch=self.train_samples, augment=True, seed=self.seed, **common)
        self.val_set = PatchDataset(val or train, samples_per_epoch=self.val_samples, seed=self.seed + 1, **common)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = EpochSampler(len(self.train_set), self.seed)
        return DataLoader(self.train_set, self.batch_size, sampler=sampler, drop_last=True, **loader_kwargs(self.num_workers))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_set, self.batch_size, shuffle=False, **loader_kwargs(self.num_workers))
