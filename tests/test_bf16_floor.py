"""benchmarks/bf16_floor.py on two tiny synthetic images with the shipped prior: the bf16 pass error and floor."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.images import write_image
from restore.operators import gaussian_kernel

PRIOR = Path(__file__).resolve().parent.parent / "priors" / "natural.pt"


@pytest.fixture
def folders(tmp_path):
    threads = torch.get_num_threads()  # main(--threads 1) changes it
    g = torch.Generator().manual_seed(0)
    for i in range(2):  # smooth random images, 32x48
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 12, generator=g), size=(32, 48), mode="bilinear")
        write_image(tmp_path / "images" / f"img{i}.png", x[0])
    (tmp_path / "kernels").mkdir()
    np.save(tmp_path / "kernels" / "4.npy", gaussian_kernel(1.0, 7).numpy().astype(np.float32))
    yield tmp_path
    torch.set_num_threads(threads)


def test_pass_error_and_floor_are_measured(folders, load_benchmark, capsys):
    out = folders / "floor.json"
    rows = load_benchmark("bf16_floor").main([
        "--folder", str(folders / "images"), "--kernels", str(folders / "kernels"), "--prior", str(PRIOR),
        "--limit", "2", "--warm", "2", "--floor", "6", "--threads", "1", "--json", str(out)])
    assert [r["image"] for r in rows] == ["img0", "img1"] and json.loads(out.read_text()) == rows
    for r in rows:
        assert 0 < r["pass_rms_G"] < 0.01  # bf16 changes the pass, a little
        assert r["pass_rms_xstep"] <= r["pass_rms_G"] * (1 + 1e-6)  # the x-step (a proximal map) does not expand it
        assert r["bf16_floor"] > 0 and r["fp32_last_residual"] > 0
        assert abs(r["psnr_diff"]) < 0.1 and r["psnr_diff"] == r["psnr_bf16"] - r["psnr_fp32"]
    assert "| img1 | 32x48 | 2 |" in capsys.readouterr().out


def test_bad_input_is_refused_in_one_line(folders, load_benchmark):
    module = load_benchmark("bf16_floor")
    with pytest.raises(SystemExit, match="--limit >= 1"):
        module.main(["--folder", str(folders / "images"), "--limit", "0"])
    with pytest.raises(SystemExit, match="error: kernel file .*9.npy' does not exist"):
        module.main(["--folder", str(folders / "images"), "--kernels", str(folders / "kernels"), "--kernel", "9",
                     "--prior", str(PRIOR)])
    with pytest.raises(SystemExit, match="error: image folder .*none does not exist"):
        module.main(["--folder", str(folders / "none"), "--kernels", str(folders / "kernels"), "--prior", str(PRIOR)])
