import os

os.environ["HF_DATASETS_OFFLINE"] = "1"

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from data import images as images_mod
from data.faces import FaceDataModule, square_resize
from data.images import (
    DataError,
    atomic_write_bytes,
    builtin_images,
    convert_channels,
    list_images,
    read_image,
    read_image_with_info,
    write_image,
)
from data.patches import EpochSampler, PatchDataModule, PatchDataset, SafeImageList, split_files


def rand_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save_rgb(path, h=24, w=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rand_u8((h, w, 3), seed)).save(path)
    return path


def assert_one_line_error(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg


# ---------------------------------------------------------------- read / write
def test_png8_rgb_and_grey_round_trip(tmp_path):
    x = torch.from_numpy(rand_u8((3, 20, 30))).float() / 255
    write_image(tmp_path / "rgb.png", x)
    y, info = read_image_with_info(tmp_path / "rgb.png")
    assert y.dtype == torch.float32 and y.shape == (3, 20, 30) and torch.equal(y, x)
    assert (info.bit_depth, info.channels, info.height, info.width) == (8, 3, 20, 30)
    write_image(tmp_path / "grey.png", x[None, :1])  # 1CHW accepted
    assert torch.equal(read_image(tmp_path / "grey.png"), x[:1])


@pytest.mark.parametrize("channels", [1, 3])
def test_png16_round_trip_exact(tmp_path, channels):
    q = torch.randint(0, 65536, (channels, 17, 23), generator=torch.Generator().manual_seed(1))
    write_image(tmp_path / "a.png", q.float() / 65535, bit_depth=16)
    y, info = read_image_with_info(tmp_path / "a.png")
    assert info.bit_depth == 16 and info.channels == channels
    assert torch.equal((y * 65535).round().long(), q)


def test_jpg_tif_bmp_webp(tmp_path):
    x = torch.linspace(0, 1, 3 * 32 * 32).reshape(3, 32, 32)
    write_image(tmp_path / "a.jpg", x)
    assert (read_image(tmp_path / "a.jpg") - x).abs().mean() < 0.03
    q = torch.randint(0, 65536, (3, 9, 11), generator=torch.Generator().manual_seed(2))
    write_image(tmp_path / "a.tif", q.float() / 65535, bit_depth=16)
    y, info = read_image_with_info(tmp_path / "a.tif")
    assert info.bit_depth == 16 and torch.equal((y * 65535).round().long(), q)
    write_image(tmp_path / "f.tiff", x[:1], bit_depth=32)
    assert torch.allclose(read_image(tmp_path / "f.tiff"), x[:1])
    for ext in ("bmp", "webp"):
        write_image(tmp_path / f"a.{ext}", x)
        assert (read_image(tmp_path / f"a.{ext}") - x).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(DataError):
        write_image(tmp_path / "a.jpg", x, bit_depth=16)


def test_tiff_planar_and_float_clipping(tmp_path):
    tifffile.imwrite(tmp_path / "p.tif", rand_u8((3, 8, 9)), photometric="rgb", planarconfig="separate")
    assert read_image(tmp_path / "p.tif").shape == (3, 8, 9)
    tifffile.imwrite(tmp_path / "f.tif", np.array([[-1.0, 0.5, 2.0]], np.float32))
    assert read_image(tmp_path / "f.tif").tolist() == [[[0.0, 0.5, 1.0]]]


def test_palette_rgba_la_and_channels(tmp_path):
    rgb = rand_u8((10, 12, 3))
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    y, info = read_image_with_info(tmp_path / "p.png")
    assert y.shape == (3, 10, 12) and info.channels == 3
    rgba = np.concatenate([rgb, rand_u8((10, 12, 1), 5)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert torch.equal(read_image(tmp_path / "a.png"), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    Image.fromarray(rgba[..., :2].copy(), "LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (1, 10, 12)
    grey = read_image(tmp_path / "a.png", channels=1)
    r, g, b = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    assert torch.allclose(grey[0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-6)
    assert read_image(tmp_path / "la.png", channels=3).shape == (3, 10, 12)
    assert convert_channels(grey, 3).shape == (3, 10, 12)


def test_bad_files_raise_one_line_data_error(tmp_path):
    good = save_rgb(tmp_path / "good.png", 20, 20)
    (tmp_path / "empty.png").write_bytes(b"")
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    write_image(tmp_path / "rgb16.png", torch.rand(3, 30, 30), bit_depth=16)
    data16 = (tmp_path / "rgb16.png").read_bytes()
    (tmp_path / "trunc16.png").write_bytes(data16[: len(data16) // 2])
    for name in ("empty.png", "trunc.png", "noise.jpg", "missing.png", "trunc16.png"):
        with pytest.raises(DataError) as e:
            read_image(tmp_path / name)
        assert_one_line_error(e, tmp_path / name)
        assert "cannot read image" in str(e.value)
    with pytest.raises(DataError) as e:
        read_image(good, max_pixels=100)
    assert_one_line_error(e, good)
    assert "20x20" in str(e.value) and "max_pixels" in str(e.value)


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    write_image(target, torch.zeros(3, 8, 8))
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        write_image(target, torch.ones(3, 8, 8))
    monkeypatch.setattr(images_mod, "_encode_png16", lambda a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_image(target, torch.ones(3, 8, 8), bit_depth=16)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"abc")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"abc"


def test_list_images(tmp_path):
    save_rgb(tmp_path / "b" / "x.PNG")
    save_rgb(tmp_path / "a.jpg")
    save_rgb(tmp_path / ".hidden" / "c.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b/x.PNG"]
    with pytest.raises(DataError) as e:
        list_images(tmp_path / "nope")
    assert_one_line_error(e, tmp_path / "nope")
    with pytest.raises(DataError):
        list_images(tmp_path / ".hidden" / "empty_dir_does_not_exist")


def test_builtin_images():
    imgs = builtin_images(channels=1)
    assert len(imgs) >= 4 and all(x.shape[0] == 1 and x.dtype == torch.float32 for x in imgs)
    assert all(0 <= x.min() and x.max() <= 1 for x in builtin_images(3))


# ---------------------------------------------------------------- patches
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for i in range(6):
        save_rgb(root / f"img{i}.png", 40 + 3 * i, 50, seed=i)
    return root


def test_patch_dataset(folder):
    files = list_images(folder)
    ds = PatchDataset(files, patch_size=16, channels=3, samples_per_epoch=20, seed=3)
    x = ds[5]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, ds[5]) and not torch.equal(x, ds[6])
    assert torch.equal(x, PatchDataset(files, 16, 3, 20, seed=3, cache_size=0)[5])
    ds.set_epoch(1)
    assert not torch.equal(x, ds[5])
    assert torch.equal(ds[5], PatchDataset(files, 16, 3, 20, seed=3)[25])  # virtual index = epoch * n + i
    aug = PatchDataset(files, patch_size=16, channels=1, samples_per_epoch=20, augment=True, seed=3)
    assert all(aug[i].shape == (1, 16, 16) for i in range(10))
    tiny = PatchDataset([torch.rand(3, 5, 1), torch.rand(1, 7, 9)], patch_size=12, channels=3, samples_per_epoch=8)
    assert all(tiny[i].shape == (3, 12, 12) for i in range(8))
    clone = pickle.loads(pickle.dumps(ds))  # what worker processes receive
    assert torch.equal(clone[5], ds[5])


def test_patch_dataset_skips_corrupt_files(folder):
    bad = folder / "img2.png"
    bad.write_bytes(b"not a png")
    ds = PatchDataset(list_images(folder), patch_size=8, samples_per_epoch=40)
    with pytest.warns(UserWarning, match="img2.png"):
        patches = [ds[i] for i in range(40)]
    assert all(p.shape == (3, 8, 8) for p in patches)
    assert ds.skipped == {str(bad)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file
        [ds[i] for i in range(40)]
    for f in list_images(folder):
        f.write_bytes(b"")
    with pytest.raises(DataError, match="unreadable"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PatchDataset(list_images(folder), patch_size=8, samples_per_epoch=4)[0]


def test_split_files_deterministic_and_stable():
    files = [f"/d/img{i:03d}.png" for i in range(200)]
    train, val = split_files(files, 0.2, seed=0)
    assert (train, val) == split_files(files, 0.2, seed=0) and set(train).isdisjoint(val)
    assert len(train) + len(val) == 200 and 20 < len(val) < 60
    train2, val2 = split_files([*files, "/d/new.png"], 0.2, seed=0)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    assert split_files(files, 0.2, seed=1) != (train, val)
    for n in (2, 3):
        tr, va = split_files(files[:n], 0.01)
        assert len(va) == 1 and len(tr) == n - 1
    assert split_files(files[:1], 0.5) == ([Path(files[0])], [])
    with pytest.raises(DataError):
        split_files(files, 1.0)


def test_epoch_sampler():
    s = EpochSampler(10, seed=0)
    e0, e1 = list(s), list(s)
    assert sorted(e0) == list(range(10)) and sorted(e1) == list(range(10, 20))
    s.set_epoch(0)
    assert list(s) == e0


@pytest.mark.parametrize("root", ["folder", "builtin"])
def test_patch_datamodule(folder, root):
    dm = PatchDataModule(root=str(folder) if root == "folder" else "builtin", patch_size=16, channels=3, batch_size=4,
                         val_fraction=0.2, train_samples=16, val_samples=8)  # fmt: skip
    dm.setup("fit")
    assert next(iter(dm.train_dataloader())).shape == (4, 3, 16, 16)
    v1, v2 = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert v1.shape == (4, 3, 16, 16) and torch.equal(v1, v2)
    if root == "folder":
        names = {Path(s).name for s in dm.train_set.images.sources} | {Path(s).name for s in dm.val_set.images.sources}
        assert len(names) == 6 and dm.val_set.images.sources and dm.train_set.images.sources


def test_patch_datamodule_missing_root(tmp_path):
    with pytest.raises(DataError, match="builtin") as e:
        PatchDataModule(root=str(tmp_path / "nope")).setup()
    assert_one_line_error(e, tmp_path / "nope")


# ---------------------------------------------------------------- faces
def make_faces(root, n=8):
    for i in range(n):
        name = "face 0 with space.jpg" if i == 0 else f"face{i}.jpg"
        save_rgb(root / name, 30 + 2 * i, 24 + i, seed=i)  # non-square
    return root


def test_square_resize():
    x = torch.rand(3, 30, 20)
    assert square_resize(x, 8).shape == (3, 8, 8)
    assert torch.equal(square_resize(x, 20), x[:, 5:25])


def test_face_datamodule_folder(tmp_path):
    make_faces(tmp_path / "faces")
    (tmp_path / "faces" / "broken.jpg").write_bytes(b"garbage")
    dm = FaceDataModule(str(tmp_path / "faces"), image_size=16, channels=1, batch_size=3, val_fraction=0.3)
    dm.setup()
    sources = [Path(s).name for s in dm.train_set.images.sources + dm.val_set.images.sources]
    assert "face 0 with space.jpg" in sources and len(sources) == 9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(dm.train_dataloader()) + list(dm.val_dataloader())
        all_items = [dm.train_set[i] for i in range(len(dm.train_set))] + [dm.val_set[i] for i in range(len(dm.val_set))]
    assert batches[0].shape == (3, 1, 16, 16) and all(0 <= b.min() and b.max() <= 1 for b in batches)
    assert len(all_items) == 9
    assert any("broken.jpg" in s for s in dm.train_set.skipped | dm.val_set.skipped)


def test_face_datamodule_imagefolder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    make_faces(tmp_path / "faces", n=6)
    dm = FaceDataModule(f"imagefolder:{tmp_path / 'faces'}", image_size=8, batch_size=2, val_fraction=0.3)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 6
    assert next(iter(dm.train_dataloader())).shape == (2, 3, 8, 8)
    assert next(iter(dm.val_dataloader())).shape[1:] == (3, 8, 8)


def test_face_datamodule_hf_offline_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(DataError, match="offline.*download: true") as e:
        FaceDataModule("hf:someone/no-such-faces").setup()
    assert "\n" not in str(e.value)


def test_face_datamodule_celeba_layout(tmp_path):
    folder = tmp_path / "celeba_root" / "celeba"
    make_faces(folder / "img_align_celeba", n=6)
    names = sorted(p.name for p in (folder / "img_align_celeba").iterdir())
    parts = [0, 0, 0, 1, 1, 2]
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts)))
    dm = FaceDataModule(str(tmp_path / "celeba_root"), image_size=8, batch_size=2)
    dm.setup()
    assert [p.name for p in dm.train_set.images.sources] == names[:3]
    assert [p.name for p in dm.val_set.images.sources] == names[3:5]
    assert next(iter(dm.train_dataloader())).shape == (2, 3, 8, 8)
    (folder / "list_eval_partition.txt").unlink()  # no partition: hash split of the image folder
    dm = FaceDataModule(str(tmp_path / "celeba_root"), image_size=8, batch_size=2, val_fraction=0.2)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 6 and len(dm.val_set) >= 1


@pytest.mark.parametrize("source", ["missing_dir", "imagefolder:missing_dir"])
def test_face_datamodule_missing_source(tmp_path, source):
    source = source.replace("missing_dir", str(tmp_path / "missing_dir"))
    with pytest.raises(DataError, match="CelebA root") as e:
        FaceDataModule(source).setup()
    assert_one_line_error(e, tmp_path / "missing_dir")


def test_safe_image_list_tensors_pass_through():
    x = torch.rand(3, 4, 4)
    assert SafeImageList([x]).get(0) == (0, x)
    with pytest.raises(DataError):
        SafeImageList([])
