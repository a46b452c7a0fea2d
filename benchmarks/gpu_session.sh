#!/usr/bin/env bash
# One call on a lent GPU for the speed figures issue 7 still lacks, each step under its own time limit so that
# the whole fits in one device command (the machine's start-up comes on top). The first two calls (2026-11-27,
# H200; BENCHMARKS.md "Speed") ran earlier versions of this script (commits e18e4ef and 3f7cedf): the quality
# protocol, the CUDA tests, the eager, eager-graph and compiled JPMAP rows at 320x448. This third one:
#   1. restore.py end to end on a full CBSD68 image (kernel 9, noise 7.65, its preset), fp32 against --fast
#      (bf16 + channels_last + fused nets + CUDA graph replay): wall time and PSNR as a user gets them
#   2. 1x1 convolutions as matrix products with the bias in the epilogue (JPMAPConfig(pointwise_matmul=True):
#      the second call's profiles put 25-31% of eager GPU time in the bias adds after cuDNN's convolutions, and
#      276 of the 462 convolutions of the fused z-step are 1x1; predicted: eager-graph 23.9 -> about 20 ms at
#      320x448, 127 -> about 105 ms at 1024x1024), against the same rows without it, eager and graph, profiled
#      (speed_gpu's profile now opens with the time by operator family)
#   3. the sizes the issue names that have no rows yet: 512x512 and 2048x2048, fp32 and the --fast variant
#      (bf16-cl-fused-graph)
#   4. compiled JPMAP with CUDA graphs (torch.compile reduce-overhead) and the fused nets at 1024x1024 (about 65 s
#      of compilation; the second call's 70 s limit cut it; 320x448 was measured: 10.8 ms)
#   5. the training target (170 images/s, batch 16 of 128x128): the compiled step with CUDA graphs, no profiler
#      (the first call measured the compiled step: 113 s of compilation, 118 images/s; the second call's 170 s
#      for both, with the profiler, gave no row)
#   6. (after step 1) bf16's rounding floor on the GPU's kernels with the decoder mean now in fp32
#      (benchmarks/bf16_floor.py: 8 full images, kernel 4, noise 2.55; this CPU: BENCHMARKS.md "bf16 against fp32")
# About 9.5 minutes at most (limits 2 x 45 + 30 + 60 + 50 + 110 + 230 s). benchmarks/gpu_train.sh (the face prior) needs
# a session of its own.
#
# From this machine (the device tool's run), carrying the test images, the kernels and the wheels the device's
# python lacks (jsonargparse for train.py's CLI):
#   mkdir -p .carry && cp -r ../shared/data/test/CBSD68 ../shared/data/kernels .carry/
#   pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client
#   run(command="bash benchmarks/gpu_session.sh", carry=[".carry/CBSD68", ".carry/kernels", ".whl"], timeout_s=600)
#   (name the folders: .carry/faces64 of gpu_train.sh would put the whole .carry over the 64 MiB limit)
# Everything lands in $OUT (8 files at most come back): gpu.txt, restore.log, floor.log, floor.json, speed.json,
# speed.log, profile.txt.
# A step that fails or runs out of time leaves its log and the next step runs.
# Smoke run on a CPU (no CUDA): GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_session}
mkdir -p "$OUT"
export HF_DATASETS_OFFLINE=1
source benchmarks/device_python.sh  # PY, PYTHONPATH (and the carried wheels)
FOLDER=${CBSD68:-.carry/CBSD68}
KERNELS=${KERNELS:-.carry/kernels}
if [ "${GPU_SESSION_SMOKE:-0}" = 1 ]; then  # tiny settings: checks the plumbing, not the GPU
    SPEED=(--device cpu --iters 1 --warmup 1 --threads 1 --train-batch 1 --train-size 64)
    MM_SIZES=(64x64); MM=(bf16-cl-fused bf16-cl-fused-mm bf16-cl-fused-graph bf16-cl-fused-mm-graph)
    EAGER_SIZES=(64x64); EAGER=(fp32 bf16-cl-fused-graph); SIZES=(64x128); GRAPHS=(bf16-cl-fused)
    TRAIN=(bf16-cl)
    RESTORE=(--device cpu --iterations 2); IMAGE_CROP=64
    FLOOR=(--device cpu --limit 1 --crop 64 --warm 1 --floor 3 --threads 1)
else
    SPEED=()
    MM_SIZES=(320x448 1024x1024); MM=(bf16-cl-fused bf16-cl-fused-mm bf16-cl-fused-graph bf16-cl-fused-mm-graph)
    EAGER_SIZES=(512x512 2048x2048); EAGER=(fp32 bf16-cl-fused-graph); SIZES=(1024x1024)
    GRAPHS=(bf16-cl-cudagraphs-fused); TRAIN=(bf16-cl-cudagraphs)
    RESTORE=(); IMAGE_CROP=0
    FLOOR=(--limit 8 --floor 30)
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi";
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/gpu.txt"

step() {  # step SECONDS LOG COMMAND...: run with a time limit, log its output, note its exit status
    local limit=$1 log=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >> "$OUT/$log" 2>&1
    echo "# exit $? after $((SECONDS - t0)) s (limit $limit s): $*" >> "$OUT/$log"
}

# 1. restore.py as a user runs it: the first CBSD68 image (cropped in the smoke run), fp32 then --fast
IMAGE=$(ls "$FOLDER" | sort | head -1)
if [ "$IMAGE_CROP" -gt 0 ]; then
    "$PY" -c "import sys; from data.images import read_image_with_info as r, write_image as w
x, _ = r(sys.argv[1]); w(sys.argv[2], x[:, :$IMAGE_CROP, :$IMAGE_CROP])" "$FOLDER/$IMAGE" "$OUT/clean.png"
    CLEAN=$OUT/clean.png
else
    CLEAN=$FOLDER/$IMAGE
fi
for mode in fp32 fast; do
    flags=(); [ $mode = fast ] && flags=(--fast)
    step 45 restore.log "$PY" restore.py --clean "$CLEAN" --operator blur --kernel "$KERNELS/9.npy" --noise-std 7.65 \
        --no-progress --out "$OUT/restore_$mode" "${RESTORE[@]}" "${flags[@]}"
    "$PY" -c "import json, sys; m = json.load(open(sys.argv[1])); print('# $mode:', {k: m.get(k) for k in
        ('psnr', 'ssim', 'seconds', 'iterations')})" "$OUT/restore_$mode/metrics.json" >> "$OUT/restore.log" 2>&1
done
rm -rf "$OUT"/restore_fp32 "$OUT"/restore_fast "$OUT/clean.png"

# 6. bf16's pass error and residual floor against fp32 (the numbers behind bf16 running all its iterations)
step 30 floor.log "$PY" benchmarks/bf16_floor.py --folder "$FOLDER" --kernels "$KERNELS" --json "$OUT/floor.json" \
    "${FLOOR[@]}"

# 2-5. speed, alone on the GPU; one JSON, rewritten after every row
J=(--json "$OUT/speed.json")
step 60 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${MM_SIZES[@]}" \
    --variants "${MM[@]}" --cudnn-benchmark --profile "$OUT/profile.txt"
step 50 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${EAGER_SIZES[@]}" \
    --variants "${EAGER[@]}" --cudnn-benchmark
step 110 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${SIZES[@]}" \
    --variants "${GRAPHS[@]}" --cudnn-benchmark
step 230 speed.log "$PY" benchmarks/speed_gpu.py --only train "${J[@]}" "${SPEED[@]}" --train-variants "${TRAIN[@]}"
ls -la "$OUT"
