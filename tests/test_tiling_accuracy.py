"""benchmarks/tiling_accuracy.py on a tiny prior and synthetic images: every operator runs with its restore.py
preset (the per-noise and per-factor lists of configs/restore/natural.yaml included) and the table is printed."""

import re

import torch

from data.images import write_image
from hvae.export import export_prior
from restore.presets import preset_for, read_presets


def test_every_operator_with_its_preset(tmp_path, tiny_model, load_benchmark, capsys):
    g = torch.Generator().manual_seed(0)
    images = tmp_path / "images"
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(40, 40), mode="bilinear")
    write_image(images / "a.png", x[0])
    prior = export_prior(tiny_model, tmp_path / "prior.pt", half=False)
    bench = load_benchmark("tiling_accuracy")
    bench.main(["--prior", str(prior), "--images", str(images), "--limit", "1", "--size", "32", "--tile", "16",
                "--kernels", str(tmp_path / "none"), "--threads", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| a\.png \| ([^|]+) \| (\d+) \| \d+ \| \d+ \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    presets = read_presets(bench.ROOT / "configs/restore/natural.yaml")
    want = {"blur motion (k9, 7.65)": preset_for(presets, "blur", 7.65), "blur gaussian (1.6, 7.65)":
            preset_for(presets, "blur", 7.65), "sr x2 bicubic (3)": preset_for(presets, "sr", 3.0, 2),
            "denoise (25)": preset_for(presets, "denoise", 25.0), "inpaint 50% (3)": preset_for(presets, "inpaint", 3.0)}
    assert {label.strip(): int(iters) for label, iters, _, _ in rows} == {k: v["iterations"] for k, v in want.items()}
    assert all(abs(float(whole) - float(tiled)) < 1.0 for _, _, whole, tiled in rows)
    assert re.search(r"largest \|diff\|: [\d.]+ dB over 5 runs", out)
