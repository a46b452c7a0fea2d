"""benchmarks/speed_gpu.py on the CPU with the tiny config: every row measured, none an error; bad counts refused."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _speed(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed_gpu.py"), "--device", "cpu",
           "--config", str(ROOT / "configs" / "tiny.yaml"), "--sizes", "32x32", "--threads", "1",
           "--train-batch", "2", "--train-size", "32", *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_cpu_rows_are_measured_and_written_to_json(tmp_path):
    out, profile = tmp_path / "speed.json", tmp_path / "profile.txt"
    proc = _speed(tmp_path, "--iters", "2", "--warmup", "1", "--variants", "fp32", "fp32-cl", "bf16-cl",
                  "--train-variants", "fp32", "bf16-cl", "--json", str(out), "--profile", str(profile))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["kind"], r["variant"]) for r in rows] == [("jpmap", "fp32"), ("jpmap", "fp32-cl"),
                                                         ("jpmap", "bf16-cl"), ("train", "fp32"),
                                                         ("train", "bf16-cl")]
    assert not [r for r in rows if "error" in r], [r["error"] for r in rows if "error" in r]
    assert all(r["ms_per_iter"] > 0 for r in rows if r["kind"] == "jpmap")
    assert all(r["core_ms"] > 0 and r["full_ms"] > 0 and r["syncfree_ms"] > 0 for r in rows if r["kind"] == "train")
    titles = [line for line in profile.read_text().splitlines() if line.startswith("## ")]
    assert titles == ["## JPMAP 32x32 fp32: 2 iterations", "## JPMAP 32x32 fp32-cl: 2 iterations",
                      "## JPMAP 32x32 bf16-cl: 2 iterations", "## training 2x32x32 fp32: 2 core steps",
                      "## training 2x32x32 fp32: 2 full steps", "## training 2x32x32 fp32: 2 syncfree steps",
                      "## training 2x32x32 bf16-cl: 2 core steps", "## training 2x32x32 bf16-cl: 2 full steps",
                      "## training 2x32x32 bf16-cl: 2 syncfree steps"]
    assert "aten::convolution" in profile.read_text()
    families = [line for line in profile.read_text().splitlines() if line.startswith("operator self CPU time")]
    assert len(families) == 9  # one per profiled JPMAP row, three per training row
    for line in families:  # the families and "other" share all of the operators' time; convolutions take some
        found = re.findall(r"([a-z ,()]+) (\d+)%", line.split(": ", 1)[1])
        shares = {name.strip(): float(pct) for name, pct in found}
        assert abs(sum(shares.values()) - 100) <= 4 and shares["convolution"] > 0, line
    assert data["settings"]["zstep_ops"]["fused"]["convolutions"] < data["settings"]["zstep_ops"]["plain"]["convolutions"]


def test_zero_warm_up_is_refused_in_one_line(tmp_path):
    proc = _speed(tmp_path, "--warmup", "0")
    assert proc.returncode == 2 and "--warmup must be at least 1" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_family_summary_counts_operators_and_inductor_kernels_once(load_benchmark):
    """The profile's family line: aten operators by family, torch.compile's triton kernels as their own family
    (they run under no operator), CUDA kernels under an operator not counted twice; a graph replay says so."""
    from types import SimpleNamespace
    speed_gpu = load_benchmark("speed_gpu")

    def event(key, us):
        return SimpleNamespace(key=key, self_device_time_total=us, self_cpu_time_total=0.0)

    events = [event("aten::cudnn_convolution", 300.0), event("aten::add_", 100.0), event("aten::index", 100.0),
              event("triton_poi_fused_add_silu_0", 500.0), event("sm90_xmma_fprop_implicit_gemm", 300.0)]
    line = speed_gpu.family_summary(events, device_time=True)
    assert line.startswith("operator self device time by family (1.0 ms in all): convolution 30%, ")
    assert "add (bias, residual) 10%" in line and "Inductor kernels 50%" in line and line.endswith("other 10%\n")
    eager = speed_gpu.family_summary(events[:3], device_time=True)
    assert "Inductor" not in eager and "convolution 60%" in eager
    assert "none attributed" in speed_gpu.family_summary([event("sm90_xmma_fprop", 5.0)], device_time=True)


def test_gpu_default_variants_exist(load_benchmark):
    """The rows a plain run on a GPU measures are real variants (a misspelt one would fail only there)."""
    speed_gpu = load_benchmark("speed_gpu")
    assert set(speed_gpu.GPU_JPMAP) <= set(speed_gpu.VARIANTS)
    assert set(speed_gpu.GPU_TRAIN) <= set(speed_gpu.TRAIN_VARIANTS)
    fast = speed_gpu.VARIANTS["bf16-cl-fused-mm-graph"]  # restore.py --fast on CUDA
    assert fast.bf16 and fast.channels_last and fast.fuse_nets and fast.cuda_graph and fast.pointwise_matmul


def test_batched_jpmap_rows_report_per_image_time_and_conv_traffic(tmp_path):
    """--jpmap-batch: the batch's time and FLOPs, and per image; --bandwidth: the convolutions' own traffic in ms
    (fp32: 4 bytes per value read or written)."""
    from hvae.config import HVAEConfig
    from hvae.cost import zstep_op_counts
    out = tmp_path / "speed.json"
    proc = _speed(tmp_path, "--only", "jpmap", "--variants", "fp32", "--jpmap-batch", "2", "--iters", "1",
                  "--warmup", "1", "--json", str(out), "--bandwidth", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["size"] == "2x32x32" and "error" not in row
    assert row["ms_per_image_iter"] == row["ms_per_iter"] / 2
    arch = HVAEConfig.from_dict(yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["model"]["arch"])
    conv_bytes = 2 * 4 * zstep_op_counts(arch, 32, 32)["conv_elements"]
    assert row["conv_traffic_ms"] == pytest.approx(conv_bytes / 2e12 * 1e3)
    single = _speed(tmp_path, "--only", "jpmap", "--variants", "fp32", "--iters", "1", "--warmup", "1",
                    "--json", str(tmp_path / "one.json"))
    (one,) = json.loads((tmp_path / "one.json").read_text())["rows"]
    assert single.returncode == 0 and one["gflop_per_iter"] * 2 == row["gflop_per_iter"]
    assert "conv_traffic_ms" not in one  # no bandwidth known for a CPU
    assert _speed(tmp_path, "--jpmap-batch", "0").returncode == 2
    refused = _speed(tmp_path, "--bandwidth", "-1")
    assert refused.returncode == 2 and "--bandwidth and --peak-tflops must be > 0" in refused.stderr


def test_inductor_settings_of_a_variant(load_benchmark):
    """A variant's inductor settings apply while it compiles and are undone after; an option this torch lacks is
    left out and named (the device's torch is older than this machine's)."""
    import torch._inductor.config as inductor_config
    speed_gpu = load_benchmark("speed_gpu")
    tuned = speed_gpu.VARIANTS["bf16-cl-cudagraphs-fused-mm-gemmtune"]
    assert tuned.pointwise_matmul and tuned.compile_mode == "reduce-overhead" and "gemmtune" not in speed_gpu.TRAIN_VARIANTS
    before = inductor_config.max_autotune_gemm
    with tuned.inductor_settings():
        assert inductor_config.max_autotune_gemm is True and inductor_config.max_autotune_gemm_backends == "ATEN,TRITON"
    assert inductor_config.max_autotune_gemm == before
    bad = speed_gpu.Variant("x", True, True, "default", inductor=(("no_such_option", 1), ("max_autotune_gemm", True)))
    assert bad.missing_inductor_options() == ["no_such_option"] and not tuned.missing_inductor_options()
    with bad.inductor_settings():
        assert inductor_config.max_autotune_gemm is True and not hasattr(inductor_config, "no_such_option")
