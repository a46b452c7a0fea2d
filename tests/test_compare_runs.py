"""benchmarks/compare_runs.py: paired PSNR differences of two runs, all rows and equal-iteration rows."""

import csv

import pytest

FIELDS = ["dataset", "image", "task", "setting", "method", "psnr", "iterations", "height", "width"]


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for image, psnr, iters in rows:
            w.writerow(dict(dataset="natural", image=image, task="deblur", setting="k4 s2.55", method="pnp-hvae",
                            psnr=psnr, iterations=iters, height=32, width=48))
    return path


def test_paired_differences_and_equal_iteration_subset(tmp_path, load_benchmark):
    a = _csv(tmp_path / "a.csv", [("i0", 30.0, 30), ("i1", 25.0, 15), ("i2", 20.0, 30)])
    b = _csv(tmp_path / "b.csv", [("i0", 30.01, 30), ("i1", 25.08, 30), ("i3", 1.0, 30)])
    lines = load_benchmark("compare_runs").main([str(a), str(b)])
    assert lines[0] == ("all: 2 image-settings: mean +0.0450 dB, largest |difference| 0.0800 dB, "
                        "within 0.05 dB: 1/2")
    assert lines[1].startswith("as many iterations: 1 image-settings: mean +0.0100 dB")
    assert lines[2].startswith("iterations: A 22.5, B 30.0 on average; A stopped earlier on 1, B on 0")
    assert lines[3] == "  i1 k4 s2.55: +0.0800 dB (15 / 30 iterations)"


def test_unrelated_or_missing_files_are_refused(tmp_path, load_benchmark):
    a = _csv(tmp_path / "a.csv", [("i0", 30.0, 30)])
    b = _csv(tmp_path / "b.csv", [("other", 30.0, 30)])
    module = load_benchmark("compare_runs")
    with pytest.raises(SystemExit, match="share no image-setting"):
        module.main([str(a), str(b)])
    with pytest.raises(SystemExit, match="none.csv: No such file or directory"):
        module.main([str(a), str(tmp_path / "none.csv")])
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(SystemExit, match="line 2 is not a row of benchmarks/quality.py"):
        module.main([str(a), str(tmp_path / "bad.csv")])
    (tmp_path / "no_iterations.csv").write_text(
        "dataset,image,task,setting,method,psnr,height,width\nnatural,i0,deblur,k4 s2.55,pnp-hvae,30,32,48\n")
    with pytest.raises(SystemExit, match="no iterations column: not a CSV of benchmarks/quality.py"):
        module.main([str(a), str(tmp_path / "no_iterations.csv")])
