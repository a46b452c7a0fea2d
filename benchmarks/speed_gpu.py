"""JPMAP and training speed of the like-for-like preset (configs/patchvdvae.yaml, random weights).

    python benchmarks/speed_gpu.py                                   # on a GPU: the issue-7 table
    python benchmarks/speed_gpu.py --device cpu --sizes 128x128 --iters 2 --threads 1   # the same table on CPU
    python benchmarks/speed_gpu.py --variants bf16-cl-compile --sizes 1024x1024 --json out/speed.json

JPMAP rows: milliseconds per iteration (z-step = encoder + tempered top-down pass + G(z), then the exact
FFT x-step of a Gaussian deblurring problem) of one image, or of ``--jpmap-batch`` images in one call (then also
per image), after warm-up iterations (which include any compilation, each compiled row its own),
timed over ``--iters`` iterations with no host synchronisation inside (tol 0, one check at the end) and
torch.cuda.synchronize around; peak memory (torch.cuda.max_memory_allocated); FLOPs per iteration counted
by FlopCounterMode on the meta device (2 per multiply-add; the x-step's FFTs are not counted; the model's
FLOPs for every variant, so the fused nets' multiplications by zero blocks are not counted), the achieved
TFLOP/s and its fraction of the bf16 dense peak (``--peak-tflops``; 989 for H100/H200 SXM by default), and
"conv traffic ms": the time the convolutions' own memory traffic takes at the device's bandwidth (``--bandwidth``;
3.35 and 4.8 TB/s for H100 and H200 SXM), each convolution's input read and output written once, 2 bytes per
element in bf16 and 4 in fp32 (hvae.cost.zstep_op_counts): a floor for any pass that keeps these convolutions,
however its element-wise work is fused.
Training rows: images/s at batch 16 of 128x128 (CPU default: batch 1 of 64x64), "core" = ELBO forward,
backward and Adamax step; "full" is train.py's whole update after the backward (HVAEModule.apply_update: the
gradient norm, the skip decision read on the host, the Adamax step, lr schedule and EMA); "full sync-free" the same
update decided on the device (``model.speed.sync_free``, hvae/update.py: no host synchronisation).
A row that runs out of memory says OOM instead of stopping the script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data.images import atomic_write_bytes  # noqa: E402
from hvae.config import HVAEConfig  # noqa: E402
from hvae.cost import parameter_count, training_step_flops, zstep_flops, zstep_op_counts  # noqa: E402
from hvae.model import HierarchicalVAE  # noqa: E402
from hvae.module import HVAEModule, OptimConfig, SpeedConfig  # noqa: E402
from restore.cli import native_bf16_cpu  # noqa: E402
from restore.jpmap import JPMAPConfig, jpmap  # noqa: E402
from restore.operators import Blur, gaussian_kernel  # noqa: E402

DEFAULT_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak, SXM parts
DEFAULT_BANDWIDTH_TBS = {"H100": 3.35, "H200": 4.8}  # HBM bandwidth, SXM parts (TB/s)


@dataclass(frozen=True)
class Variant:
    """One way of running the network: precision, memory layout, compilation."""

    name: str
    bf16: bool
    channels_last: bool
    compile_mode: str | None  # None: eager
    cast_weights: bool = True  # bf16 JPMAP: a bf16 copy of the convolution weights (False: autocast casts per call)
    bf16_state: bool = False  # bf16 JPMAP: the decoder's residual stream in bf16 too
    fuse_nets: bool = False  # JPMAP: each decoder group's prior and posterior nets as one net (hvae.fused)
    cuda_graph: bool = False  # JPMAP: the eager pass replayed from a CUDA graph (no compilation)
    pointwise_matmul: bool = False  # JPMAP: 1x1 convolutions as matrix products with the bias in the epilogue
    inductor: tuple[tuple[str, object], ...] = ()  # JPMAP: torch._inductor.config settings while it compiles

    def missing_inductor_options(self) -> list[str]:
        """The options of ``inductor`` that this torch does not have (the device's torch is older than this
        machine's): left out by :meth:`inductor_settings`, and named in the row."""
        import torch._inductor.config as inductor_config
        return [k for k, _ in self.inductor if not hasattr(inductor_config, k)]

    def inductor_settings(self):
        """A context that applies ``inductor``'s options that this torch has (nothing when empty)."""
        if not self.inductor:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config
        missing = self.missing_inductor_options()
        return inductor_config.patch({k: v for k, v in self.inductor if k not in missing})

    def jpmap_config(self, iters: int) -> JPMAPConfig:
        return JPMAPConfig(gamma=10 / 255, tau=0.8, max_iters=iters, tol=0.0, check_every=iters,
                           precision="bf16" if self.bf16 else "fp32", channels_last=self.channels_last,
                           compile=self.compile_mode is not None, compile_mode=self.compile_mode or "default",
                           cast_weights=self.cast_weights, bf16_state=self.bf16_state, fuse_nets=self.fuse_nets,
                           cuda_graph=self.cuda_graph, pointwise_matmul=self.pointwise_matmul)


GEMM_TUNE = (("max_autotune_gemm", True), ("max_autotune_gemm_backends", "ATEN,TRITON"),
             ("epilogue_fusion", True), ("prologue_fusion", True))
VARIANTS = {v.name: v for v in [
    Variant("fp32", False, False, None),
    Variant("fp32-fused", False, False, None, fuse_nets=True),
    Variant("fp32-cl", False, True, None),
    Variant("bf16", True, False, None),
    Variant("bf16-cl", True, True, None),
    Variant("bf16-cl-percall", True, True, None, cast_weights=False),  # as before network_for's bf16 copy
    Variant("bf16-cl-bf16state", True, True, None, bf16_state=True),
    Variant("bf16-cl-fused", True, True, None, fuse_nets=True),
    Variant("bf16-cl-fused-bf16state", True, True, None, bf16_state=True, fuse_nets=True),
    Variant("bf16-cl-fused-mm", True, True, None, fuse_nets=True, pointwise_matmul=True),
    Variant("fp32-graph", False, False, None, cuda_graph=True),
    Variant("bf16-cl-graph", True, True, None, cuda_graph=True),
    Variant("bf16-cl-fused-graph", True, True, None, fuse_nets=True, cuda_graph=True),
    Variant("bf16-cl-fused-bf16state-graph", True, True, None, bf16_state=True, fuse_nets=True, cuda_graph=True),
    Variant("bf16-cl-fused-mm-graph", True, True, None, fuse_nets=True, cuda_graph=True, pointwise_matmul=True),
    Variant("bf16-cl-compile", True, True, "default"),
    Variant("bf16-cl-compile-fused", True, True, "default", fuse_nets=True),  # profiled: its kernels are visible
    Variant("bf16-cl-compile-fused-mm", True, True, "default", fuse_nets=True, pointwise_matmul=True),
    Variant("bf16-cl-cudagraphs", True, True, "reduce-overhead"),
    Variant("bf16-cl-cudagraphs-percall", True, True, "reduce-overhead", cast_weights=False),
    Variant("bf16-cl-cudagraphs-bf16state", True, True, "reduce-overhead", bf16_state=True),
    Variant("bf16-cl-cudagraphs-fused", True, True, "reduce-overhead", fuse_nets=True),
    Variant("bf16-cl-cudagraphs-fused-bf16state", True, True, "reduce-overhead", bf16_state=True, fuse_nets=True),
    Variant("bf16-cl-cudagraphs-fused-mm", True, True, "reduce-overhead", fuse_nets=True, pointwise_matmul=True),
    # the matrix products (1x1 convolutions, pointwise_matmul) autotuned among cuBLAS and Inductor's Triton templates,
    # which take the SiLU before (prologue) and the bias, SiLU and residual adds after (epilogue) into the product;
    # the 3x3 convolutions stay cuDNN's (max-autotune would time Triton templates for them too: longer, rarely faster)
    Variant("bf16-cl-compile-fused-mm-gemmtune", True, True, "default", fuse_nets=True, pointwise_matmul=True,
            inductor=GEMM_TUNE),
    Variant("bf16-cl-cudagraphs-fused-mm-gemmtune", True, True, "reduce-overhead", fuse_nets=True,
            pointwise_matmul=True, inductor=GEMM_TUNE),
    # weights as constants of the compiled graph (inference only): constant folding, layouts chosen at compile time
    # (on a CPU: oneDNN's pre-packed weights, SiLU and residual adds fused into the convolutions as post-ops)
    Variant("fp32-compile-freeze", False, False, "default", inductor=(("freezing", True),)),
    Variant("bf16-cl-compile-fused-freeze", True, True, "default", fuse_nets=True, inductor=(("freezing", True),)),
    Variant("bf16-cl-cudagraphs-fused-mm-freeze", True, True, "reduce-overhead", fuse_nets=True,
            pointwise_matmul=True, inductor=(("freezing", True),)),
    Variant("bf16-cl-autotune", True, True, "max-autotune"),
    # max-autotune's Triton GEMM templates can take bias, SiLU and the residual add into a matrix product's epilogue,
    # which the 1x1 convolutions as matrix products (pointwise_matmul) expose; minutes of autotuning per shape
    Variant("bf16-cl-autotune-fused", True, True, "max-autotune", fuse_nets=True),
    Variant("bf16-cl-autotune-fused-mm", True, True, "max-autotune", fuse_nets=True, pointwise_matmul=True),
]}
# training has no per-call casts, bf16 stream, fused nets or eager graphs (JPMAP's inference options)
TRAIN_VARIANTS = [v.name for v in VARIANTS.values()
                  if v.cast_weights and not (v.bf16_state or v.fuse_nets or v.cuda_graph or v.pointwise_matmul
                                             or v.inductor)]
# on a GPU, what users run: fp32 (the default), restore.py --fast (eager, CUDA graph replay, matrix-product 1x1
# convolutions), --fast --compile reduce-overhead; training in fp32 and with the README's flags (bf16-mixed,
# channels_last, compiled with CUDA graphs). The H200's figures: BENCHMARKS.md, "NVIDIA H200, third call"
GPU_JPMAP = ["fp32", "bf16-cl-fused-mm-graph", "bf16-cl-cudagraphs-fused"]
GPU_TRAIN = ["fp32", "bf16-cl-cudagraphs"]
# On CPU, fp32, and bf16 + channels_last where oneDNN has native bf16 kernels (AVX512-BF16 or AMX): 1.6-2.2x
# faster than fp32 on the development machine's EPYC (BENCHMARKS.md, CPU). Without them bf16 may fall back to
# slow kernels, so it is asked for with --variants; inductor takes minutes on a CPU (--variants too).
CPU_DEFAULT = ["fp32", "bf16-cl"] if native_bf16_cpu() else ["fp32"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# (header, row key, format) of the printed tables; a missing value prints "-", a failed row its error
JPMAP_COLUMNS = [("size", "size", "s"), ("variant", "variant", "s"), ("ms/iter", "ms_per_iter", ",.1f"),
                 ("warm-up s", "warmup_s", ".1f"), ("peak GiB", "peak_gib", ".2f"),
                 ("GFLOP/iter", "gflop_per_iter", ",.0f"), ("TFLOP/s", "tflops", ".3g"),
                 ("% of bf16 peak", "peak_pct", ".1f"), ("ms/image/iter", "ms_per_image_iter", ",.2f"),
                 ("conv traffic ms", "conv_traffic_ms", ".2f")]
TRAIN_COLUMNS = [("training batch", "size", "s"), ("variant", "variant", "s"), ("core ms/step", "core_ms", ",.1f"),
                 ("core images/s", "core_images_per_s", ".1f"), ("full ms/step", "full_ms", ",.1f"),
                 ("full images/s", "full_images_per_s", ".1f"), ("full sync-free ms", "syncfree_ms", ",.1f"),
                 ("full sync-free images/s", "syncfree_images_per_s", ".1f"),
                 ("peak GiB", "peak_gib", ".2f"),
                 ("GFLOP/step", "gflop_per_step", ",.0f"), ("TFLOP/s (core)", "tflops", ".3g"),
                 ("% of bf16 peak", "peak_pct", ".1f")]


def _header(columns: list[tuple[str, str, str]]) -> None:
    print("\n| " + " | ".join(c[0] for c in columns) + " |")
    print("|" + "---|" * len(columns))


def _print_row(row: dict, columns: list[tuple[str, str, str]]) -> None:
    cells = []
    for i, (_, key, fmt) in enumerate(columns):
        value = row.get(key)
        if value is None:
            cells.append(row["error"] if "error" in row and i == 2 else "-")
        else:
            cells.append(format(value, fmt) if fmt != "s" else str(value))
    print("| " + " | ".join(cells) + " |", flush=True)


# operator families of the profile summary: (family, aten operator names); the rest is "other"
FAMILIES = [("convolution", ("aten::cudnn_convolution", "aten::mkldnn_convolution", "aten::convolution",
                             "aten::_convolution", "aten::_slow_conv2d_forward", "aten::convolution_backward",
                             "aten::cudnn_convolution_transpose", "aten::mkldnn_convolution_backward")),
            ("matrix product", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
            ("add (bias, residual)", ("aten::add", "aten::add_")),
            ("activation", ("aten::silu", "aten::silu_", "aten::gelu", "aten::relu", "aten::relu_",
                            "aten::silu_backward", "aten::gelu_backward")),
            ("copy, cast", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous")),
            ("cat", ("aten::cat",))]
INDUCTOR = "Inductor kernels"  # torch.compile's generated kernels (triton_*: fused pointwise and reductions), which
#                                run under no aten operator


def _family_of(key: str) -> str:
    if key.startswith("triton_"):
        return INDUCTOR
    return next((family for family, names in FAMILIES if key in names), "other")


def family_summary(averages, device_time: bool) -> str:
    """One line: the operators' self time (device time on a GPU) summed by family, in % of all operators' self
    time. Only ``aten::`` operators count, so a kernel is counted once (under the operator that launched it),
    and torch.compile's own kernels (``triton_*``, launched by no operator) as one more family when there are
    any; kernels replayed from a CUDA graph belong to no operator, and the line says so when that is all."""
    def self_time(event) -> float:
        return event.self_device_time_total if device_time else event.self_cpu_time_total
    ops = [e for e in averages if e.key.startswith(("aten::", "triton_"))]
    total = sum(self_time(e) for e in ops)
    kind = "device" if device_time else "CPU"
    if total <= 0:
        return f"operator self {kind} time by family: none attributed to operators (a CUDA graph replay)\n"
    families = [family for family, _ in FAMILIES] + [INDUCTOR, "other"]
    time_of = dict.fromkeys(families, 0.0)
    for e in ops:
        time_of[_family_of(e.key)] += self_time(e)
    shares = [f"{family} {100 * time_of[family] / total:.0f}%" for family in families
              if family != INDUCTOR or time_of[INDUCTOR] > 0]
    return f"operator self {kind} time by family ({total / 1e3:,.1f} ms in all): " + ", ".join(shares) + "\n"


def profile_tables(run, device: torch.device, title: str, rows: int = 25) -> str:
    """torch.profiler over ``run()``: a line of the operators' time by family (convolutions, adds, activations,
    copies...), the operators by self device time (CPU time on a CPU), then the same grouped by input shapes
    (which convolutions, at which resolution, take the time)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        run()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    by_op = averages.table(sort_by=key, row_limit=rows, max_name_column_width=60)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=rows,
                                                                  max_name_column_width=40, max_shapes_column_width=80)
    summary = family_summary(averages, device.type == "cuda")
    return f"## {title}\n\n{summary}\n{by_op}\n{by_shape}\n"


def jpmap_row(arch: HVAEConfig, variant: Variant, height: int, width: int, iters: int, warmup: int,
              device: torch.device, peak_tflops: float | None, profile: Path | None = None, batch: int = 1,
              bandwidth_tbs: float | None = None) -> dict:
    """Times JPMAP iterations of ``variant`` on ``batch`` random 3 x height x width observations (one call)."""
    size = f"{height}x{width}" if batch == 1 else f"{batch}x{height}x{width}"
    row = {"kind": "jpmap", "size": size, "variant": variant.name}
    padded = (height + (-height) % arch.multiple, width + (-width) % arch.multiple)
    flops = batch * zstep_flops(arch, *padded)
    row["gflop_per_iter"] = flops / 1e9
    if bandwidth_tbs:
        conv_elements = batch * zstep_op_counts(arch, *padded, fused=variant.fuse_nets)["conv_elements"]
        row["conv_traffic_ms"] = conv_elements * (2 if variant.bf16 else 4) / (bandwidth_tbs * 1e12) * 1e3
    prior = None
    try:
        if variant.compile_mode is not None:
            # a fresh compilation, under this row's settings: guards on another row's prior of the same
            # architecture could pass and reuse a graph compiled with other inductor settings
            torch._dynamo.reset()
        torch.manual_seed(0)
        prior = HierarchicalVAE(arch).to(device).eval()
        op = Blur(gaussian_kernel(1.6), 7.65 / 255).to(device)
        y = torch.rand(batch, arch.image_channels, height, width, device=device)
        _reset_peak(device)
        missing = variant.missing_inductor_options()
        if missing:
            row["inductor_missing"] = missing
        with variant.inductor_settings():  # compilation happens in the warm-up, under these settings
            start = time.perf_counter()
            jpmap(y, op, prior, variant.jpmap_config(warmup))  # warm-up, compilation included
            _sync(device)
            row["warmup_s"] = time.perf_counter() - start
            start = time.perf_counter()
            result = jpmap(y, op, prior, variant.jpmap_config(iters))
            _sync(device)
        seconds = (time.perf_counter() - start) / iters
        if result.iterations != iters:
            raise RuntimeError(f"ran {result.iterations} iterations instead of {iters}")
        row.update(ms_per_iter=seconds * 1e3, peak_gib=_peak_gib(device), tflops=flops / seconds / 1e12)
        if batch > 1:
            row["ms_per_image_iter"] = row["ms_per_iter"] / batch
        row["peak_pct"] = 100 * row["tflops"] / peak_tflops if peak_tflops else None
        if profile is not None:  # after the timing, so that it does not disturb it
            title = f"JPMAP {size} {variant.name}: 2 iterations"
            with profile.open("a") as f, variant.inductor_settings():
                f.write(profile_tables(lambda: jpmap(y, op, prior, variant.jpmap_config(2)), device, title))
    except Exception as err:  # noqa: BLE001 - one failing row (OOM, a compiler error) must not end the table
        row["error"] = "OOM" if _is_oom(err) else f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    finally:
        prior = None  # drop the model before the next row (the closures above read the name)
        _reset_peak(device)
    return row


def train_row(arch: HVAEConfig, variant: Variant, batch: int, size: int, steps: int, warmup: int,
              device: torch.device, peak_tflops: float | None, profile: Path | None = None) -> dict:
    """Images/s of the core training step (forward, backward, Adamax) and of the full one (+ norm, EMA)."""
    row = {"kind": "train", "size": f"{batch}x{size}x{size}", "variant": variant.name}
    flops = training_step_flops(arch, size, size, batch)
    row["gflop_per_step"] = flops / 1e9
    module = None
    try:
        torch.manual_seed(0)
        speed = SpeedConfig(channels_last=variant.channels_last, compile=variant.compile_mode is not None,
                            compile_mode=variant.compile_mode or "default")
        module = HVAEModule(arch, OptimConfig(optimizer="adamax"), speed=speed).to(device)
        module.setup("fit")
        updates = {}  # sync_free -> (optimiser, schedule) as train.py builds them (capturable Adamax sync-free)
        for sync_free in (False, True):
            module.speed = replace(speed, sync_free=sync_free)
            optimizers = module.configure_optimizers()
            updates[sync_free] = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        opt = updates[False][0]
        x = torch.rand(batch, arch.image_channels, size, size, device=device)

        def core() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):
                loss = module._elbo(x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def full(sync_free: bool = False) -> None:
            module.speed = replace(speed, sync_free=sync_free)
            optimizer, schedule = updates[sync_free]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):
                loss = module._elbo(x).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            module.apply_update(optimizer, schedule)  # train.py's update: clipping, skip, step, schedule, EMA

        _reset_peak(device)
        start = time.perf_counter()
        for _ in range(warmup):
            core()
        _sync(device)
        row["warmup_s"] = time.perf_counter() - start
        # "syncfree": the same update decided on the device: how much of the core-to-full difference is the
        # host synchronisation, how much the norm, schedule and EMA themselves
        for name, fn in (("core", core), ("full", full), ("syncfree", lambda: full(sync_free=True))):
            fn()
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            seconds = (time.perf_counter() - start) / steps
            row[f"{name}_ms"] = seconds * 1e3
            row[f"{name}_images_per_s"] = batch / seconds
        row["peak_gib"] = _peak_gib(device)
        row["tflops"] = flops / (row["core_ms"] / 1e3) / 1e12
        row["peak_pct"] = 100 * row["tflops"] / peak_tflops if peak_tflops else None
        if profile is not None:  # after the timing, so that it does not disturb it; the full steps too: what
            with profile.open("a") as f:  # runs between the skip decision's synchronisation and the next step
                for name, fn in (("core", core), ("full", full), ("syncfree", lambda: full(sync_free=True))):
                    title = f"training {batch}x{size}x{size} {variant.name}: 2 {name} steps"
                    f.write(profile_tables(lambda step=fn: [step() for _ in range(2)], device, title))
    except Exception as err:  # noqa: BLE001
        row["error"] = "OOM" if _is_oom(err) else f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    finally:
        module = None  # drop the model before the next row
        _reset_peak(device)
    return row


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "patchvdvae.yaml"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="+", default=["320x448", "512x512", "1024x1024", "2048x2048"])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="JPMAP variants (default by device)")
    p.add_argument("--train-variants", nargs="+", help="training variants: " + ", ".join(TRAIN_VARIANTS))
    p.add_argument("--iters", type=int, default=10, help="timed JPMAP iterations (and training steps)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations/steps (default 3 GPU, 1 CPU)")
    p.add_argument("--train-batch", type=int, default=None, help="default 16 (GPU), 1 (CPU)")
    p.add_argument("--jpmap-batch", type=int, default=1,
                   help="JPMAP rows restore this many images of each size in one call (tiles batched, a data set "
                        "swept): ms per iteration of the batch, and per image")
    p.add_argument("--train-size", type=int, default=None, help="default 128 (GPU), 64 (CPU)")
    p.add_argument("--only", choices=["jpmap", "train"], default=None, help="only the JPMAP or the training rows")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device (default 989 for H100/H200, none otherwise)")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="memory bandwidth of the device in TB/s, for the conv traffic column (default 3.35 for "
                        "H100, 4.8 for H200, none otherwise)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True (cuDNN times its algorithms for each new shape)")
    p.add_argument("--profile", type=Path, default=None,
                   help="append torch.profiler tables of each row to this file (2 JPMAP iterations, 2 core "
                        "training steps)")
    p.add_argument("--json", default=None, help="also write the settings and rows to this JSON file, after every "
                   "row; rows already in it are kept (several runs with their own time limits share one file)")
    args = p.parse_args()
    if args.jpmap_batch < 1:
        p.error("--jpmap-batch must be at least 1")
    if any(v is not None and not v > 0 for v in (args.bandwidth, args.peak_tflops)):
        p.error("--bandwidth and --peak-tflops must be > 0 (TB/s, TFLOP/s)")
    if args.iters < 1 or (args.warmup is not None and args.warmup < 1):
        p.error("--iters and --warmup must be at least 1 (the warm-up holds the compilation and CUDA graph capture)")
    wrong = [v for v in args.train_variants or [] if v not in TRAIN_VARIANTS]
    if wrong:
        p.error(f"--train-variants {' '.join(wrong)}: not a training variant; choose from {', '.join(TRAIN_VARIANTS)}")

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    for name in ("recompile_limit", "cache_size_limit"):  # one compilation per size and variant
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    arch = HVAEConfig.from_dict(yaml.safe_load(Path(args.config).read_text())["model"]["arch"])
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops
    if peak is None and gpu:
        peak = next((v for k, v in DEFAULT_PEAK_TFLOPS.items() if k in name), None)
    bandwidth = args.bandwidth
    if bandwidth is None and gpu:
        bandwidth = next((v for k, v in DEFAULT_BANDWIDTH_TBS.items() if k in name), None)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    variants = args.variants or (GPU_JPMAP if gpu else CPU_DEFAULT)
    train_variants = args.train_variants or (GPU_TRAIN if gpu else CPU_DEFAULT)
    batch = args.train_batch or (16 if gpu else 1)
    tsize = args.train_size or (128 if gpu else 64)
    n_params = parameter_count(HierarchicalVAE(arch))
    ops = {kind: zstep_op_counts(arch, 64, 64, fused=kind == "fused") for kind in ("plain", "fused")}
    mflop_px = ops["plain"]["flops"] / 4096 / 1e6

    print(f"# {name}; torch {torch.__version__}; {Path(args.config).name}: {n_params / 1e6:.2f} M parameters, "
          f"{mflop_px:.2f} MFLOP/px per z-step; cudnn TF32 {torch.backends.cudnn.allow_tf32 if gpu else '-'}, "
          f"benchmark {args.cudnn_benchmark}; "
          f"bf16 peak {_fmt(peak, 0)} TFLOP/s; {warmup} warm-up + {args.iters} timed iterations")
    print("# z-step operators (eager, fp32, tau 0.8): " + "; ".join(
        f"{kind} {c['convolutions']} convolutions, {c['operators']} aten operators, "
        f"{c['flops'] / 4096 / 1e6:.2f} MFLOP/px executed, convolutions read and write {c['conv_elements'] / 4096:,.0f} "
        f"values/px, other operators write {c['elementwise_elements'] / 4096:,.0f}" for kind, c in ops.items()))
    meta = {"device": name, "torch": torch.__version__, "config": args.config, "parameters": n_params,
            "mflop_per_pixel_zstep": mflop_px, "peak_tflops": peak, "bandwidth_tbs": bandwidth,
            "iters": args.iters, "warmup": warmup,
            "cudnn_benchmark": args.cudnn_benchmark, "zstep_ops": ops}
    out = Path(args.json) if args.json else None
    rows = json.loads(out.read_text())["rows"] if out is not None and out.is_file() else []

    def record(row: dict, columns: list[tuple[str, str, str]]) -> None:
        row["cudnn_benchmark"] = args.cudnn_benchmark  # runs with and without may share the JSON
        rows.append(row)
        _print_row(row, columns)
        if out is not None:  # after every row, so that a run stopped at its time limit keeps what it measured
            # a temporary file, then a rename: a run killed mid-write leaves the old file whole
            atomic_write_bytes(out, json.dumps({"settings": meta, "rows": rows}, indent=1).encode())

    if args.only != "train":
        _header(JPMAP_COLUMNS)
        for size in args.sizes:
            h, w = _size(size)
            for v in variants:
                record(jpmap_row(arch, VARIANTS[v], h, w, args.iters, warmup, device, peak, args.profile,
                                 args.jpmap_batch, bandwidth), JPMAP_COLUMNS)
    if args.only != "jpmap":
        _header(TRAIN_COLUMNS)
        for v in train_variants:
            record(train_row(arch, VARIANTS[v], batch, tsize, args.iters, warmup, device, peak, args.profile),
                   TRAIN_COLUMNS)
    if out is not None:
        print(f"\n# wrote {out}")


if __name__ == "__main__":
    main()
