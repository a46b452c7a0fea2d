"""The benchmark scripts no other test runs, through their command lines on tiny inputs: each exits 0 and prints
its table (they rot unnoticed otherwise: tiling_accuracy.py broke when the presets became per-noise lists)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.images import read_image, write_image
from hvae.export import export_prior
from hvae.model import HierarchicalVAE
from restore.operators import gaussian_kernel

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_config):
    """(folder of 2 textured 64x64 images, kernels folder with 9.npy, the suite's tiny prior)."""
    root = tmp_path_factory.mktemp("bench")
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic")
        write_image(root / "images" / f"im{i}.png", (x + 0.05 * torch.rand(x.shape, generator=g)).clamp(0, 1)[0])
    (root / "kernels").mkdir()
    np.save(root / "kernels" / "9.npy", gaussian_kernel(1.0, 5).numpy())
    torch.manual_seed(0)
    prior = export_prior(HierarchicalVAE(tiny_config).eval(), root / "prior.pt", half=False)
    return root / "images", root / "kernels", prior


def test_train_throughput():
    out = run("train_throughput.py", "--config", "configs/tiny.yaml", "--size", "32", "--batch", "2", "--steps", "1",
              "--precisions", "fp32", "--device", "cpu")
    assert re.search(r"^\| fp32 \| [\d.]+ \| [\d.]+ \| \d+ \|$", out, re.M)


def test_restore_speed(assets):
    out = run("restore_speed.py", "--prior", assets[2], "--sizes", "32", "--iters", "1", "--device", "cpu")
    assert re.search(r"^\| 32x32 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", out, re.M)


def test_restore_large_makes_its_work_folder(tmp_path):
    out = run("restore_large.py", "--size", "64", "--tile", "32", "--iters", "1", "--processes", "1",
              "--work", tmp_path / "new" / "work")
    assert re.search(r"^\| 1 \| 4 \| [\d.]+ \| [\d.]+ \| \d+ \|", out, re.M)


def test_folder_restore_matches_the_loop(assets, tmp_path):
    out = run("folder_restore.py", "--folder", assets[0], "--limit", "2", "--crop", "32", "--batches", "2",
              "--extra", f"--prior {assets[2]} --iterations 1", "--out", tmp_path / "fb")
    diff = re.search(r"--images-per-batch 2 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| ([\d.e+-]+) \|", out)
    assert diff and float(diff.group(1)) < 1e-3


def test_noise_auto_restore(assets, tmp_path):
    out = run("noise_auto_restore.py", "--folder", assets[0], "--kernels", assets[1], "--limit", "1", "--crop", "64",
              "--noises", "7.65", "--iterations", "1", "--csv", tmp_path / "n.csv")
    est = re.search(r"^\| 7.65 \| ([\d.]+) \(", out, re.M)
    assert est and 5 < float(est.group(1)) < 10 and (tmp_path / "n.csv").is_file()


def test_pack_faces_keeps_names(assets, tmp_path):
    out = run("pack_faces.py", assets[0], tmp_path / "packed", "--size", "16")
    assert "2 images" in out
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["im0.png", "im1.png"]
    assert read_image(tmp_path / "packed" / "im0.png").shape == (3, 16, 16)


def test_noise_auto_restore_super_resolution(assets, tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(160, 160), mode="bicubic")
    write_image(tmp_path / "images" / "big.png", x.clamp(0, 1)[0])
    out = run("noise_auto_restore.py", "--folder", tmp_path / "images", "--scale", "2", "--limit", "1", "--crop", "160",
              "--noises", "7.65", "--iterations", "1")
    assert "sr x2, valid boundary" in out and re.search(r"^\| 7.65 \| [\d.]+ \(", out, re.M)


def test_objective(assets):
    out = run("objective.py", "--folder", assets[0], "--prior", assets[2], "--limit", "1", "--crop", "32",
              "--tasks", "sr2", "--adam-iters", "2", "--then-adam", "1", "--threads", "1")
    n = r"([\d.-]+)"
    row = re.search(rf"^\| sr2 x2 s2.55 \| 1 \| {n} \| {n} \| [01] \| [\d.]+ \| [\d.]+ \| {n} \|", out, re.M)
    assert row and all(abs(float(v)) < 1e6 for v in row.groups())
