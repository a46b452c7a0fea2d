"""benchmarks/quality.py on two tiny synthetic images (no shared data): CSV and tables with finite numbers."""

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from data.images import write_image
from restore.operators import gaussian_kernel

ROOT = Path(__file__).resolve().parent.parent
PRIOR = ROOT / "priors" / "natural.pt"


@pytest.fixture
def workspace(tmp_path):
    threads = torch.get_num_threads()  # main(--threads 1) changes it; the other tests keep theirs
    yield _workspace(tmp_path)
    torch.set_num_threads(threads)


def _workspace(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = tmp_path / "images"
    for i in range(2):  # smooth random images, 32x48
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 12, generator=g), size=(32, 48), mode="bilinear")
        write_image(images / f"img{i}.png", x[0])
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    np.save(kernels / "9.npy", gaussian_kernel(1.0, 7).numpy().astype(np.float32))
    return tmp_path, images, kernels


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not PRIOR.is_file(), reason="needs the shipped prior priors/natural.pt")
def test_quality_main_writes_csv_and_tables(workspace, load_benchmark):
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    out, tables = tmp / "q.csv", tmp / "t.md"
    rows = q.main(["--folder", str(images), "--kernels", str(kernels), "--prior", str(PRIOR), "--tasks", "deblur",
                   "--deblur-kernels", "9", "--deblur-noises", "7.65", "--methods", "pnp-hvae", "adam", "wiener", "tv",
                   "--iters", "2", "--adam-iters", "2", "--device", "cpu", "--threads", "1",
                   "--out", str(out), "--tables", str(tables)])
    assert len(rows) == 2 * 4
    written = _read(out)
    assert len(written) == 8
    assert {r["method"] for r in written} == {"pnp-hvae", "adam", "wiener", "tv"}
    for r in written:
        assert r["setting"] == "k9 s7.65" and r["height"] == "32" and r["width"] == "48"
        for key in ("psnr", "ssim", "seconds"):
            assert math.isfinite(float(r[key])), (key, r)
        assert 5 < float(r["psnr"]) < 80 and -1 <= float(r["ssim"]) <= 1
    assert {r["iterations"] for r in written if r["method"] in ("pnp-hvae", "adam")} == {"2"}
    text = tables.read_text()
    assert "| k9 s7.65 |" in text and "pnp-hvae" in text and "Command:" in text and "Machine:" in text
    assert "nan" not in text



@pytest.mark.skipif(not PRIOR.is_file(), reason="needs the shipped prior priors/natural.pt")
def test_quality_grey_images_through_the_colour_prior(workspace, load_benchmark, monkeypatch):
    """--channels 1: the images read grey, degraded grey; PnP-HVAE and Adam restore them through the colour prior
    as one grey observation (GreyObservation), the other methods on the grey image; every row scored grey."""
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    seen, jpmap = [], q.jpmap
    monkeypatch.setattr(q, "jpmap", lambda y, op, *a, **k: seen.append((y.shape[1], type(op).__name__)) or jpmap(
        y, op, *a, **k))
    rows = q.main(["--folder", str(images), "--kernels", str(kernels), "--prior", str(PRIOR), "--tasks", "deblur",
                   "--deblur-kernels", "9", "--deblur-noises", "7.65", "--methods", "pnp-hvae", "adam", "wiener",
                   "--channels", "1", "--iters", "2", "--adam-iters", "2", "--device", "cpu", "--threads", "1",
                   "--out", str(tmp / "g.csv"), "--tables", str(tmp / "g.md")])
    assert len(rows) == 2 * 3 and seen == [(1, "GreyObservation")] * 2
    for r in rows:
        assert 5 < float(r["psnr"]) < 80, r


def test_valid_boundary_scores_every_method_on_the_observations_frame(workspace, tiny_model, load_benchmark, monkeypatch):
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    monkeypatch.setattr(q, "lpips_metric", lambda mode, device: (None, "LPIPS off"))
    out = tmp / "v.csv"
    base = ["--folder", str(images), "--kernels", str(kernels), "--deblur-kernels", "9", "--deblur-noises", "7.65",
            "--device", "cpu", "--threads", "1", "--tables", str(tmp / "v.md")]
    first = tmp / "w.csv"  # the circular model's rows run apart and merged, as a slow method would be
    q.main([*base, "--tasks", "deblur", "sr2", "--boundary", "valid", "--methods", "wiener", "--out", str(first)])
    q.main([*base, "--tasks", "deblur", "sr2", "--boundary", "valid", "--methods", "wiener-circ", "--merge",
            str(first), "--out", str(out)])
    written = sorted(_read(out), key=lambda r: (r["task"] != "deblur", r["image"], r["method"] != "wiener"))
    assert [(r["task"], r["method"]) for r in written] == [("deblur", m) for m in ("wiener", "wiener-circ")] * 2 \
        + [("sr2", m) for m in ("wiener", "wiener-circ")] * 2
    # 7x7 kernel: the deblurring frame is 6 pixels smaller than the 32x48 crop; x2 (bicubic, 9x9, its support
    # shifted half a pixel to the block centre): 4 + 4 margin
    assert {(r["task"], r["height"], r["width"]) for r in written} == {("deblur", "26", "42"), ("sr2", "24", "40")}
    for task in ("deblur", "sr2"):  # on smooth images the circular model's border error already shows
        by = {r["method"]: float(r["psnr"]) for r in written if r["task"] == task and r["image"] == written[0]["image"]}
        assert by["wiener"] > by["wiener-circ"], (task, by)
    for bad in (["--tasks", "inpaint_random", "--boundary", "valid"], ["--tasks", "deblur", "--methods", "wiener-circ"]):
        with pytest.raises(SystemExit):
            q.main([*base, *bad, "--out", str(tmp / "never.csv")])
    assert not (tmp / "never.csv").exists()


def test_other_tasks_and_adam_recording(workspace, tiny_model, load_benchmark):
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    out = tmp / "o.csv"
    q.main(["--folder", str(images), "--kernels", str(kernels), "--tasks", "sr2", "sr4", "inpaint_random",
            "inpaint_boxes", "--methods", "wiener", "bicubic", "--device", "cpu", "--threads", "1",
            "--out", str(out), "--tables", str(tmp / "o.md")])
    written = [r for r in _read(out) if r["method"] == "wiener"]
    assert [r["task"] for r in written] == ["sr2"] * 2 + ["sr4"] * 2 + ["inpaint_random"] * 2 + ["inpaint_boxes"] * 2
    assert all(math.isfinite(float(r["psnr"])) for r in written)
    assert {r["height"] for r in written if r["task"] == "sr4"} == {"32"}
    assert {r["kernel"] for r in written if r["task"].startswith("sr")} == {"bicubic"}  # restore.py's default
    start = {(r["image"], r["task"]): r for r in _read(out) if r["method"] == "bicubic"}  # the operator's start
    assert len(start) == len(written) and all(r["iterations"] == "0" for r in start.values())
    # rows of their own, not copies of Wiener's
    assert all(float(r["psnr"]) != float(start[r["image"], r["task"]]["psnr"]) for r in written)

    # the Adam recorder sees x after every step; its last record is the returned x
    from restore.baselines import AdamConfig, adam_joint
    from restore.operators import Blur
    op = Blur(gaussian_kernel(1.0, 7), 0.03)
    y = op.degrade(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    seen = []
    with q.recording_adam(lambda x: seen.append(x.clone())):
        r = adam_joint(y, op, tiny_model, AdamConfig(max_iters=3, return_estimate="x"))
    assert torch.optim.Adam.__name__ == "Adam" and len(seen) == 3
    assert torch.equal(seen[-1], r.x)


def test_bf16_fast_path_restores_like_fp32(workspace, tiny_model, load_benchmark):
    """--precision bf16 --channels-last reaches JPMAP (the settings line says so) and restores about as fp32 does."""
    from hvae.export import export_prior
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    prior = export_prior(tiny_model, tmp / "tiny.pt", half=False)
    common = ["--folder", str(images), "--kernels", str(kernels), "--prior", str(prior), "--tasks", "deblur",
              "--deblur-kernels", "9", "--deblur-noises", "7.65", "--methods", "pnp-hvae", "--iters", "3",
              "--device", "cpu", "--threads", "1"]
    fp32 = q.main(common + ["--out", str(tmp / "fp32.csv"), "--tables", str(tmp / "fp32.md")])
    bf16 = q.main(common + ["--precision", "bf16", "--channels-last", "--out", str(tmp / "bf16.csv"),
                            "--tables", str(tmp / "bf16.md")])
    assert "bf16, channels_last" in (tmp / "bf16.md").read_text() and "fp32" in (tmp / "fp32.md").read_text()
    assert [r["image"] for r in fp32] == [r["image"] for r in bf16]
    for a, b in zip(fp32, bf16):
        assert a["psnr"] != b["psnr"] and abs(a["psnr"] - b["psnr"]) < 0.5, (a["psnr"], b["psnr"])


def test_pil_plot_fallback(tmp_path, load_benchmark):
    q = load_benchmark("quality")
    path = tmp_path / "p.png"
    q._pil_plot(path, {"a": ([1, 2, 3], [1.0, 0.1, 0.01]), "b": ([1, 2], [0.5, 0.2])}, "t", "x", "y", True)
    from PIL import Image
    assert Image.open(path).size == (600, 400)


def test_merge_joins_an_earlier_run_and_refuses_a_mismatch(workspace, load_benchmark):
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    common = ["--folder", str(images), "--kernels", str(kernels), "--tasks", "deblur", "--deblur-kernels", "9",
              "--deblur-noises", "7.65", "--device", "cpu", "--threads", "1"]
    first = tmp / "wiener.csv"
    q.main(common + ["--methods", "wiener", "--out", str(first), "--tables", str(tmp / "w.md")])
    out, tables = tmp / "both.csv", tmp / "both.md"
    q.main(common + ["--methods", "tv", "--merge", str(first), "--out", str(out), "--tables", str(tables)])
    written = _read(out)
    assert sorted(r["method"] for r in written) == ["tv", "tv", "wiener", "wiener"]
    assert {(r["image"], r["psnr"]) for r in written if r["method"] == "wiener"} == \
        {(r["image"], r["psnr"]) for r in _read(first)}
    text = tables.read_text()
    assert "| setting | wiener | tv |" in text and "Merged from earlier runs" in text and "nan" not in text
    # merging into the same file: it ends holding both methods (and nothing half-written is left)
    q.main(common + ["--methods", "tv", "--merge", str(first), "--out", str(first), "--tables", str(tables)])
    assert sorted(r["method"] for r in _read(first)) == ["tv", "tv", "wiener", "wiener"]
    assert not list(tmp.glob("*.partial"))

    # the same images at another crop are other degraded images: refused before anything runs
    with pytest.raises(SystemExit, match=r"--merge: wiener has no row for deblur k9 s7.65 on img0 \(32x32\)"):
        q.main(common + ["--crop", "32", "--methods", "tv", "--merge", str(first), "--out", str(tmp / "x.csv")])
    assert not (tmp / "x.csv").exists()
    bad = tmp / "bad.csv"
    bad.write_text("image,psnr\nimg0,20\n")
    with pytest.raises(SystemExit, match="not a CSV of benchmarks/quality.py"):
        q.main(common + ["--methods", "tv", "--merge", str(bad), "--out", str(tmp / "y.csv")])


def test_runs_on_split_images_add_up(workspace, load_benchmark):
    """--start 0 --limit 1 and --start 1 give the same rows as one run on both images (same degraded images), and
    a run on both images merges the two CSVs together, though neither covers all of its images alone."""
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    common = ["--folder", str(images), "--kernels", str(kernels), "--tasks", "deblur", "--deblur-kernels", "9",
              "--deblur-noises", "7.65", "--device", "cpu", "--threads", "1", "--tables", str(tmp / "t.md")]
    q.main(common + ["--methods", "wiener", "--out", str(tmp / "all.csv")])
    both = {r["image"]: float(r["psnr"]) for r in _read(tmp / "all.csv")}
    q.main(common + ["--methods", "wiener", "--limit", "1", "--out", str(tmp / "a.csv")])
    q.main(common + ["--methods", "wiener", "--start", "1", "--out", str(tmp / "b.csv")])
    parts = {r["image"]: float(r["psnr"]) for f in ("a.csv", "b.csv") for r in _read(tmp / f)}
    assert parts == both and len(parts) == 2
    q.main(common + ["--methods", "tv", "--merge", str(tmp / "a.csv"), str(tmp / "b.csv"), "--out", str(tmp / "m.csv")])
    assert {r["image"]: float(r["psnr"]) for r in _read(tmp / "m.csv") if r["method"] == "wiener"} == both
    # a row that several CSVs hold comes from the last one given (a rerun replaces the rows it updates)
    q.write_csv(tmp / "rerun.csv", [{**r, "psnr": 99.0} for r in _read(tmp / "a.csv")])
    for order, expected in ((["all.csv", "rerun.csv"], 99.0), (["rerun.csv", "all.csv"], both["img0"])):
        q.main(common + ["--methods", "tv", "--merge", *(str(tmp / f) for f in order), "--out", str(tmp / "r.csv")])
        assert [float(r["psnr"]) for r in _read(tmp / "r.csv") if r["method"] == "wiener" and r["image"] == "img0"] \
            == [expected]
    with pytest.raises(SystemExit, match=r"wiener has no row for deblur k9 s7.65 on img1 \(32x48\)"):
        q.main(common + ["--methods", "tv", "--merge", str(tmp / "a.csv"), "--out", str(tmp / "n.csv")])
    with pytest.raises(SystemExit, match="no images .* from --start 5"):
        q.main(common + ["--methods", "tv", "--start", "5", "--out", str(tmp / "o.csv")])
    with pytest.raises(SystemExit, match="--bf16-state needs --precision bf16"):
        q.main(common + ["--methods", "pnp-hvae", "--bf16-state", "--out", str(tmp / "s.csv")])
    assert not (tmp / "s.csv").exists()


def test_pnp_bm3d_data_step_weighs_the_prior_by_lam(load_benchmark):
    """With a shrinking 'denoiser' D(x) = x / 2 on denoising, each HQS step is the weighted mean
    x_k = (y / sigma^2 + lam z_{k-1} / s_k^2) / (1 / sigma^2 + lam / s_k^2), z_k = x_k / 2."""
    q = load_benchmark("quality")
    from restore.operators import Denoising
    op = Denoising(0.1)
    y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    denoiser = lambda x, s: (calls.append(s), x / 2)[1]  # noqa: E731
    results = []
    for lam in (0.23, 1.0):
        calls.clear()
        z, iters = q.pnp_bm3d(y, op, denoiser, iters=4, lam=lam)
        expected = op.init(y)
        for s in calls:
            expected = (y / 0.1 ** 2 + lam * expected / s ** 2) / (1 / 0.1 ** 2 + lam / s ** 2) / 2
        assert iters == 4 and len(calls) == 4 and calls[0] == pytest.approx(50 / 255) and calls[-1] == pytest.approx(0.1)
        torch.testing.assert_close(z, expected)
        results.append(z)
    assert (results[0] - results[1]).abs().max() > 1e-3


def test_lpips_only_from_local_weights(workspace, load_benchmark, monkeypatch):
    """LPIPS is computed when AlexNet's weights are in torch hub's cache (here a random AlexNet saved there,
    so nothing is downloaded) and left empty, with the reason in the tables, when they are not."""
    import torchvision
    tmp, images, kernels = workspace
    q = load_benchmark("quality")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp / "hub"))
    common = ["--folder", str(images), "--kernels", str(kernels), "--tasks", "deblur", "--deblur-kernels", "9",
              "--deblur-noises", "7.65", "--device", "cpu"]
    q.main(common + ["--methods", "wiener", "--out", str(tmp / "none.csv"), "--tables", str(tmp / "none.md")])
    assert {r["lpips"] for r in _read(tmp / "none.csv")} == {""}
    assert "LPIPS not computed: no AlexNet weights at" in (tmp / "none.md").read_text()

    weights = q.lpips_weights()
    assert weights.parent == tmp / "hub" / "checkpoints"
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    q.main(common + ["--methods", "tv", "--merge", str(tmp / "none.csv"), "--out", str(tmp / "lp.csv"),
                     "--tables", str(tmp / "lp.md")])
    rows = _read(tmp / "lp.csv")
    assert {r["method"] for r in rows} == {"wiener", "tv"}
    computed = [float(r["lpips"]) for r in rows if r["method"] == "tv"]
    assert len(computed) == 2 and all(math.isfinite(v) and v > 0 for v in computed)
    assert {r["lpips"] for r in rows if r["method"] == "wiener"} == {""}  # merged from the run without weights
    text = (tmp / "lp.md").read_text()
    assert "PSNR dB / SSIM / LPIPS" in text and "LPIPS: AlexNet (torchmetrics)" in text
    assert re.search(r"^\| k9 s7.65 \| [\d.]+ / [\d.]+ / - \| [\d.]+ / [\d.]+ / [\d.]+ \|$", text, re.M)
    score, _ = q.lpips_metric("auto", torch.device("cpu"))  # the same metric scores a clean image 0
    clean = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    assert score(clean, clean) == pytest.approx(0, abs=1e-6) and score(clean.flip(-1), clean) > 0
    assert q.lpips_metric("off", torch.device("cpu"))[0] is None
