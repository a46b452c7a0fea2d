#!/usr/bin/env bash
# One call on a lent GPU for the speed figures issue 7 still lacks, each step under its own time limit so that
# the whole fits in one device command (the machine's start-up comes on top). Earlier calls (H200, 2026-11-27;
# BENCHMARKS.md "Speed") ran earlier versions of this script: commit e18e4ef (quality protocol, first rows),
# 3f7cedf (eager, eager-graph and compiled rows, profiles, CUDA tests), 957fc1e (restore.py fp32 against --fast,
# matrix-product 1x1 convolutions, 512 and 2048, compiled 1024, training with CUDA graphs: 174 images/s, bf16's
# floor). This fourth one, for the two targets left (6 ms at 320x448, 30% of bf16 peak at 1024x1024) and the
# paths the third call's changes touch:
#   1. where the time goes at 1024x1024, profiled: the eager fused pass with matrix-product 1x1 convolutions (its
#      state increments now dense: no more strided adds, BENCHMARKS.md third call), and torch.compile default mode
#      (no CUDA graphs, so the profiler sees its kernels; the family line now counts Inductor's triton kernels)
#   2. restore.py --fast's pass (bf16-cl-fused-mm-graph: 19.9 and 101.7 ms in the third call, about 18 and 92
#      predicted with dense increments) and compiled CUDA graphs with the matrix-product 1x1 convolutions
#      (bf16-cl-cudagraphs-fused-mm; 10.7 and 43.6 ms without them), at 320x448 and 1024x1024
#   3. train.py through Lightning with bf16-mixed, channels_last and torch.compile reduce-overhead (the third
#      call's 174 images/s used the module's step directly): configs/tiny.yaml on scikit-image's photographs
#   4. the CUDA tests of the fast paths (graph replay, compiled JPMAP and training, bf16 copies)
# About 9.5 minutes at most (limits 110 + 160 + 110 + 200 s). Then, if the session has about 5 minutes of device
# time left, on the warm machine (autotuning takes minutes per shape):
#   python3 benchmarks/speed_gpu.py --only jpmap --sizes 320x448 --variants bf16-cl-autotune-fused-mm --cudnn-benchmark
# benchmarks/gpu_train.sh (the face prior) needs a session of its own.
#
# From this machine (the device tool's run), carrying the wheels the device's python lacks (jsonargparse for
# train.py's CLI):
#   pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#   (this call needs no images: the speed rows use random inputs, tiny.yaml scikit-image's photographs)
# Everything lands in $OUT (8 files at most come back): gpu.txt, speed.json, speed.log, profile.txt, train.log,
# cuda_tests.log.
# A step that fails or runs out of time leaves its log and the next step runs.
# Smoke run on a CPU (no CUDA; eager variants stand in for the compiled ones): GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_session}
mkdir -p "$OUT"
export HF_DATASETS_OFFLINE=1
source benchmarks/device_python.sh  # PY, PYTHONPATH (and the carried wheels)
if [ "${GPU_SESSION_SMOKE:-0}" = 1 ]; then  # tiny settings: checks the plumbing, not the GPU
    SPEED=(--device cpu --iters 1 --warmup 1 --threads 1)
    PROFILED=(bf16-cl-fused); PROFILE_SIZES=(64x64); MM=(bf16-cl-fused-mm); MM_SIZES=(64x64 64x128)
    TRAIN=(--trainer.accelerator cpu --trainer.precision bf16-mixed --model.speed.channels_last true
           --trainer.max_steps 10)
    TESTS=(tests/restore/test_jpmap_speed.py -k "pointwise")
else
    SPEED=(--cudnn-benchmark)
    PROFILED=(bf16-cl-fused-mm bf16-cl-compile-fused); PROFILE_SIZES=(1024x1024)
    MM=(bf16-cl-fused-mm-graph bf16-cl-cudagraphs-fused-mm)
    MM_SIZES=(320x448 1024x1024)
    TRAIN=(--trainer.accelerator gpu --trainer.precision bf16-mixed --model.speed.channels_last true
           --model.speed.compile true --model.speed.compile_mode reduce-overhead --trainer.max_steps 60)
    TESTS=(tests/hvae/test_training_speed.py tests/restore/test_jpmap_speed.py)  # JPMAP's compiled tests, the slowest, last
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi";
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/gpu.txt"

step() {  # step SECONDS LOG COMMAND...: run with a time limit, log its output, note its exit status
    local limit=$1 log=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >> "$OUT/$log" 2>&1
    echo "# exit $? after $((SECONDS - t0)) s (limit $limit s): $*" >> "$OUT/$log"
}

# 1-2. speed, alone on the GPU; one JSON, rewritten after every row
J=(--json "$OUT/speed.json")
step 110 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${PROFILE_SIZES[@]}" \
    --variants "${PROFILED[@]}" --profile "$OUT/profile.txt"
step 160 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${MM_SIZES[@]}" \
    --variants "${MM[@]}"

# 3. train.py as a user runs it, compiled with CUDA graphs (the tiny config: its compilation takes seconds, not
#    the preset's 3 minutes); the last lines of its log say whether the steps ran and the loss stayed finite
rm -rf /tmp/gpu_session_tiny
step 110 train.log "$PY" train.py fit --config configs/tiny.yaml "${TRAIN[@]}" --trainer.val_check_interval 20 \
    --trainer.log_every_n_steps 5 --trainer.enable_progress_bar false --trainer.default_root_dir /tmp/gpu_session_tiny
"$PY" - /tmp/gpu_session_tiny >> "$OUT/train.log" 2>&1 <<'PYEOF'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for path in sorted(glob.glob(sys.argv[1] + "/**/events.out.tfevents.*", recursive=True)):
    acc = EventAccumulator(path); acc.Reload()
    for tag in [t for t in acc.Tags()["scalars"] if "loss" in t or "speed/" in t]:
        values = [e.value for e in acc.Scalars(tag)]
        print(f"# {tag}: {len(values)} values, first {values[0]:.4g}, last {values[-1]:.4g}")
PYEOF

# 4. the fast paths' CUDA tests (skipped on a CPU)
step 200 cuda_tests.log "$PY" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}"
ls -la "$OUT"
