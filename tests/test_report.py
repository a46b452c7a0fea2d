"""benchmarks/report.py: paired tables from quality.py CSVs (no restoration runs)."""

import csv

import pytest

COLUMNS = ["dataset", "image", "task", "setting", "kernel", "noise255", "method", "psnr", "ssim", "seconds",
           "iterations", "height", "width", "lpips"]


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for image, setting, method, psnr in rows:
            w.writerow(dict(dataset="natural", image=image, task="deblur", setting=setting, kernel=4, noise255=2.55,
                            method=method, psnr=psnr, ssim=0.5, seconds=1, iterations=1, height=8, width=8, lpips=""))
    return path


@pytest.fixture
def report(load_benchmark):
    return load_benchmark("report")


def test_paired_table_keeps_complete_images_and_the_last_csv_wins(tmp_path, report):
    a = _csv(tmp_path / "a.csv", [("img1", "k4 s2.55", "tv", 20.0), ("img1", "k10 s2.55", "tv", 22.0),
                                  ("img2", "k4 s2.55", "tv", 30.0), ("img2", "k10 s2.55", "tv", 30.0),
                                  ("img1", "k4 s2.55", "pnp-hvae", 10.0)])  # replaced by b.csv
    b = _csv(tmp_path / "b.csv", [("img1", "k4 s2.55", "pnp-hvae", 21.0), ("img1", "k10 s2.55", "pnp-hvae", 21.0),
                                  ("img2", "k4 s2.55", "pnp-hvae", 31.0)])  # img2 lacks k10: left out
    text = report.main([str(a), str(b), "--methods", "pnp-hvae", "tv", "--against", "tv"])
    assert text.startswith("1 images: img1")
    lines = text.splitlines()
    assert lines[4].startswith("| k4 s2.55 | 21.00 | 20.00 | +1.00 | 1/1 |")
    assert lines[5].startswith("| k10 s2.55 | 21.00 | 22.00 | -1.00 | 0/1 |")  # 10 after 4: numbers as numbers
    assert lines[6] == "| **all 2 settings** | 21.00 | 21.00 | +0.00 | 1/2 |"
    only = report.main([str(a), str(b), "--methods", "pnp-hvae", "tv", "--settings", "k4 s2.55"])
    assert only.startswith("2 images: img1, img2") and "| k4 s2.55 | 26.00 | 25.00 | +1.00 | 2/2 |" in only


def test_report_refuses_what_it_cannot_table(tmp_path, report):
    a = _csv(tmp_path / "a.csv", [("img1", "k4 s2.55", "tv", 20.0)])
    with pytest.raises(SystemExit, match="no image has a row of every method"):
        report.main([str(a), "--methods", "pnp-hvae", "tv"])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,psnr\nx,1\n")
    with pytest.raises(SystemExit, match="line 2 is not a row"):
        report.main([str(bad)])
    with pytest.raises(SystemExit):
        report.main([str(a), "--methods", "pnp-hvae", "tv", "--against", "adam"])
