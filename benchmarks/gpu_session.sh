#!/usr/bin/env bash
# One call on a lent GPU for the measurements issues 5 and 7 still need, each step under its own time limit so
# that the whole fits in one device command (the machine's start-up comes on top).
# The first GPU call (2026-11-27, H200; BENCHMARKS.md "Speed") ran this script as of commit e18e4ef; this is the
# second, built on what that one found:
#   1. side by side: the CUDA-only tests, and PnP-HVAE (fp32) on the full-image deblurring protocol, all 68
#      CBSD68 images x 12 settings, in 4 processes sharing the GPU (each is bound by kernel launches, not by
#      the GPU's arithmetic; their seconds are taken while sharing), and a fifth process: Adam on J(x, z) on the
#      first 4 full images (its target had been checked on crops only)
#   2. eager JPMAP at 320x448 and 1024x1024, a torch.profiler table of each row (which kernels and convolution
#      shapes take the time): first without cudnn.benchmark: fp32; bf16 with the once-made bf16 weight copy
#      (bf16-cl), with each decoder group's prior and posterior nets fused into one (bf16-cl-fused: 462
#      convolutions per z-step instead of 602), fused with the decoder's residual stream in bf16 too
#      (bf16-cl-fused-bf16state), with autocast's per-call casts (bf16-cl-percall); then with cudnn.benchmark:
#      bf16-cl, bf16-cl-fused, bf16-cl-fused-bf16state, and each replayed from a CUDA graph of the eager pass
#      (*-graph: no compilation)
#   3. CUDA graphs of the compiled pass (torch.compile reduce-overhead) with cudnn.benchmark: at 320x448 fused
#      and not (both with the bf16 stream), at 1024x1024 fused (about 65 s of compilation each)
#   (no training rows in this script: the first call's stand; the command for them comes below)
# About 9.5 minutes at most (limits 180 + 90 + 90 + 140 + 70 s): benchmarks/gpu_train.sh then fits in the
# same session only with TRAIN_SECONDS of about 150, so it is better given a session of its own.
# With device time left after it, on the still warm machine, the training target (170 images/s) is next: the
# compiled step with and without CUDA graphs, profiled (about 2.5 minutes):
#   timeout 170 python3 benchmarks/speed_gpu.py --only train --train-variants bf16-cl-compile bf16-cl-cudagraphs \
#       --json $OUT/speed_train.json --profile $OUT/profile_train.txt
#
# From this machine (the device tool's run), carrying the test images, the kernels and the wheels the device's
# python lacks (jsonargparse for train.py's CLI):
#   mkdir -p .carry && cp -r ../shared/data/test/CBSD68 ../shared/data/kernels .carry/
#   pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client
#   run(command="bash benchmarks/gpu_session.sh", carry=[".carry/CBSD68", ".carry/kernels", ".whl"], timeout_s=600)
#   (name the folders: .carry/faces64 of gpu_train.sh would put the whole .carry over the 64 MiB limit)
# Everything lands in $OUT (8 files at most come back): gpu.txt, cuda_tests.log, quality_full.csv,
# quality_adam.csv, quality.log, speed.json, speed.log, profile.txt. A step that fails or runs out of time leaves
# its log and the next step runs. Smoke run on a CPU (no CUDA): GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_session}
mkdir -p "$OUT"
export HF_DATASETS_OFFLINE=1
source benchmarks/device_python.sh  # PY, PYTHONPATH (and the carried wheels)
FOLDER=${CBSD68:-.carry/CBSD68}
KERNELS=${KERNELS:-.carry/kernels}
if [ "${GPU_SESSION_SMOKE:-0}" = 1 ]; then  # tiny settings: checks the plumbing, not the GPU
    SPEED=(--device cpu --iters 1 --warmup 1 --threads 1 --train-batch 1 --train-size 64 --train-variants fp32)
    SIZES=(64x64 64x128); EAGER=(fp32 bf16-cl bf16-cl-fused bf16-cl-fused-bf16state bf16-cl-percall)
    EAGER_BENCH=(bf16-cl bf16-cl-fused bf16-cl-fused-bf16state bf16-cl-graph bf16-cl-fused-graph)
    GRAPHS=(bf16-cl bf16-cl-fused); GRAPHS_LARGE=(bf16-cl-fused)
    QUALITY=(--device cpu --crop 64 --deblur-kernels 9 --deblur-noises 7.65 --iters 2 --threads 1)
    IMAGES=(0 1 2 3); PER_PROCESS=1; ADAM=(--adam-iters 2 --limit 1)
else
    SPEED=(--train-variants fp32 bf16-cl)
    SIZES=(320x448 1024x1024); EAGER=(fp32 bf16-cl bf16-cl-fused bf16-cl-fused-bf16state bf16-cl-percall)
    EAGER_BENCH=(bf16-cl bf16-cl-fused bf16-cl-fused-bf16state bf16-cl-graph bf16-cl-fused-graph
                 bf16-cl-fused-bf16state-graph)
    GRAPHS=(bf16-cl-cudagraphs-fused-bf16state bf16-cl-cudagraphs-bf16state)
    GRAPHS_LARGE=(bf16-cl-cudagraphs-fused-bf16state)
    QUALITY=(--device cuda)
    IMAGES=(0 17 34 51); PER_PROCESS=17; ADAM=(--adam-iters 100 --limit 4)
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi";
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/gpu.txt"

step() {  # step SECONDS LOG COMMAND...: run with a time limit, log its output, note its exit status
    local limit=$1 log=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$log" 2>&1
    echo "# exit $? after $((SECONDS - t0)) s (limit $limit s): $*" >> "$OUT/$log"
}

# 1. tests/conftest.py hides GPUs (CUDA_VISIBLE_DEVICES="") unless the variable is set: set it, or the CUDA
#    tests skip (they did in the first call)
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} step 180 cuda_tests.log "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/restore/test_jpmap_speed.py tests/hvae/test_training_speed.py &
for start in "${IMAGES[@]}"; do
    step 180 "quality_$start.log" "$PY" benchmarks/quality.py --folder "$FOLDER" --kernels "$KERNELS" \
        --tasks deblur --methods pnp-hvae --start "$start" --limit "$PER_PROCESS" "${QUALITY[@]}" \
        --out "$OUT/quality_$start.csv" --tables "$OUT/quality_$start.md" &
done
# Adam on J(x, z) (100 iterations, as on the crops) on the first 4 full images, for its target on full images
step 180 quality_adam.log "$PY" benchmarks/quality.py --folder "$FOLDER" --kernels "$KERNELS" --tasks deblur \
    --methods adam --start 0 "${ADAM[@]}" "${QUALITY[@]}" --out "$OUT/quality_adam.csv" --tables "$OUT/quality_adam.md" &
wait
awk 'FNR == 1 && NR != 1 { next } { print }' "$OUT"/quality_[0-9]*.csv > "$OUT/quality_full.csv"
for start in "${IMAGES[@]}" adam; do cat "$OUT/quality_$start.log"; done > "$OUT/quality.log"
rm -f "$OUT"/quality_[0-9]*.csv "$OUT"/quality_[0-9]*.md "$OUT"/quality_[0-9]*.log "$OUT"/quality_adam.{md,log}

# 2-3. speed, alone on the GPU; one JSON, rewritten after every row
J=(--json "$OUT/speed.json")
step 90 speed_eager.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${SIZES[@]}" \
    --variants "${EAGER[@]}" --profile "$OUT/profile.txt"
step 90 speed_eager_bench.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${SIZES[@]}" \
    --variants "${EAGER_BENCH[@]}" --cudnn-benchmark --profile "$OUT/profile.txt"
step 140 speed_graphs.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${SIZES[0]}" \
    --variants "${GRAPHS[@]}" --cudnn-benchmark
step 70 speed_graphs_large.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${SIZES[@]:1}" \
    --variants "${GRAPHS_LARGE[@]}" --cudnn-benchmark
LOGS=(speed_eager speed_eager_bench speed_graphs speed_graphs_large)
for log in "${LOGS[@]}"; do cat "$OUT/$log.log"; rm -f "$OUT/$log.log"; done > "$OUT/speed.log"
ls -la "$OUT"
