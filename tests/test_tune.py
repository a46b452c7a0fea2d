"""benchmarks/tune.py on a tiny prior and synthetic images: the grid runs, the start and Wiener lines are printed,
and --start wiener starts JPMAP from the Wiener estimate."""

import re

import numpy as np
import torch

from data.images import write_image
from hvae.export import export_prior
from restore.operators import GreyObservation, gaussian_kernel


def _psnr_lines(text: str) -> tuple[float, float, list[tuple[float, float]]]:
    start, wiener = map(float, re.search(r"PSNR of x_0 ([\d.]+), of Wiener \(grad std 0.1\) ([\d.]+)", text).groups())
    rows = [tuple(map(float, m)) for m in re.findall(r"^\| [\d.]+ \| [^|]+ \| \d+ \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)]
    return start, wiener, rows


def _training_folder(tmp_path, tiny_model, seed: int):
    """(folder, prior): 60 smooth 24x24 images (the 5% hash split keeps a few for validation) and the tiny prior."""
    g = torch.Generator().manual_seed(seed)
    folder = tmp_path / "train"
    for i in range(60):
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(24, 24), mode="bilinear")
        write_image(folder / f"im{i:02d}.png", x[0])
    return folder, export_prior(tiny_model, tmp_path / "prior.pt", half=False)


def test_tune_grid_and_start(tmp_path, tiny_model, load_benchmark, capsys, monkeypatch):
    folder, prior = _training_folder(tmp_path, tiny_model, 0)
    tune = load_benchmark("tune")
    common = ["--task", "inpaint", "--folder", str(folder), "--prior", str(prior), "--crops", "2", "--size", "16",
              "--gammas", "10", "20", "--taus", "1.0", "--iters", "1", "2"]
    tune.main(common)
    start, wiener, rows = _psnr_lines(capsys.readouterr().out)
    assert len(rows) == 4 and start != wiener
    starts = []  # the x0 of every jpmap call
    jpmap = tune.jpmap
    monkeypatch.setattr(tune, "jpmap", lambda y, op, prior, config, x0: starts.append((y, op, x0)) or jpmap(
        y, op, prior, config, x0=x0))
    tune.main(common + ["--start", "wiener"])
    start_w, wiener_w, rows_w = _psnr_lines(capsys.readouterr().out)
    assert start_w == wiener_w == wiener and len(rows_w) == 4
    assert len(starts) == 4 and all(torch.equal(x0, tune.tikhonov(y, op, grad_std=0.1).estimate) for y, op, x0 in starts)


def test_tune_valid_boundary_scores_the_frame(tmp_path, tiny_model, load_benchmark, capsys, monkeypatch):
    folder, prior = _training_folder(tmp_path, tiny_model, 1)
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    np.save(kernels / "1.npy", gaussian_kernel(1.0, 5).numpy())
    tune = load_benchmark("tune")
    seen, psnr = [], tune.psnr
    monkeypatch.setattr(tune, "psnr", lambda x, ref: seen.append(tuple(x.shape[-2:])) or psnr(x, ref))
    tune.main(["--task", "blur", "--boundary", "valid", "--kernels", str(kernels), "--kernel-ids", "1",
               "--folder", str(folder), "--prior", str(prior), "--crops", "2", "--size", "20", "--gammas", "10",
               "--taus", "1.0", "--iters", "1"])
    out = capsys.readouterr().out
    assert "valid boundary" in out and len(_psnr_lines(out)[2]) == 1
    assert set(seen) == {(16, 16)}  # 20x20 crops, 5x5 kernel: every PSNR on the 16x16 frame


def test_tune_demosaic_task(tmp_path, tiny_model, load_benchmark, capsys):
    """--task demosaic: restore.py's operator (an RGGB Bayer mask), started from the harmonic fill of each channel."""
    folder, prior = _training_folder(tmp_path, tiny_model, 2)
    tune = load_benchmark("tune")
    tune.main(["--task", "demosaic", "--folder", str(folder), "--prior", str(prior), "--crops", "2", "--size", "16",
               "--gammas", "20", "--taus", "1.0", "--iters", "1"])
    out = capsys.readouterr().out
    start, wiener, rows = _psnr_lines(out)
    assert "task demosaic, noise 2.55/255" in out and len(rows) == 1 and start > 20  # the fill of a smooth image
    op = tune.task_operator("demosaic", 16, None, 2.55)
    assert torch.equal(op.mask[0].sum(0), torch.ones(16, 16)) and float(op.mask[0, 0, 0, 0]) == 1  # R at (0, 0)


def test_tune_grey_crops_through_a_colour_prior(tmp_path, tiny_model, load_benchmark, capsys, monkeypatch):
    """--channels 1: grey crops, restored as one grey observation each (GreyObservation), scored grey."""
    folder, prior = _training_folder(tmp_path, tiny_model, 3)
    tune = load_benchmark("tune")
    calls, jpmap = [], tune.jpmap
    monkeypatch.setattr(tune, "jpmap", lambda y, op, prior, config, x0: calls.append((y, op, x0)) or jpmap(
        y, op, prior, config, x0=x0))
    tune.main(["--task", "inpaint", "--channels", "1", "--folder", str(folder), "--prior", str(prior), "--crops", "2",
               "--size", "16", "--gammas", "20", "--taus", "1.0", "--iters", "2"])
    rows = _psnr_lines(capsys.readouterr().out)[2]
    assert len(rows) == 1 and all(np.isfinite(rows[0]))
    (y, op, x0), = calls
    assert isinstance(op, GreyObservation) and y.shape[1] == 1 and x0.shape[1] == 3
