"""benchmarks/compile_cache.py on a tiny prior: the second process reuses the first one's compiled code."""

import pytest

from hvae.export import export_prior
from hvae.model import HierarchicalVAE


def test_second_process_finds_the_compiled_pass_in_the_cache(tmp_path, tiny_config, load_benchmark):
    prior = export_prior(HierarchicalVAE(tiny_config), tmp_path / "tiny.pt")
    rows = load_benchmark("compile_cache").main(["--prior", str(prior), "--size", "32", "--threads", "1"])
    assert [r["run"] for r in rows] == [1, 2]
    first, second = rows
    assert first["first_s"] > 2 * first["second_s"]  # the first call of a process compiles
    assert second["first_s"] < first["first_s"] / 2  # the second process compiles from the cache: much less


def test_missing_prior_is_refused(tmp_path, load_benchmark):
    with pytest.raises(SystemExit, match="error: prior .*none.pt not found"):
        load_benchmark("compile_cache").main(["--prior", str(tmp_path / "none.pt")])
