#!/usr/bin/env bash
# Device calls on a lent GPU for the speed figures issue 7 still lacks, each step under its own time limit so that a
# part fits in one device command (the machine's start-up comes on top). Earlier calls (H200, 2026-11-27;
# BENCHMARKS.md "Speed") ran earlier versions of this script: commit e18e4ef (quality protocol, first rows),
# 3f7cedf (eager, eager-graph and compiled rows, profiles, CUDA tests), 957fc1e (restore.py fp32 against --fast,
# matrix-product 1x1 convolutions, 512 and 2048, compiled 1024, training with CUDA graphs: 174 images/s, bf16's
# floor). This one is for the two targets left (6 ms at 320x448, 30% of bf16 peak at 1024x1024) and what the third
# call's changes touch, in four parts: speed first (the targets), the others in the time left or in later sessions
# (a session has 15 minutes of device time, start-up included):
#
#   bash benchmarks/gpu_session.sh speed    # about 9 minutes at most (limits 170 + 290 + 90 s)
#     1. restore.py --fast's pass (bf16-cl-fused-mm-graph; 19.9 and 101.7 ms in the third call, about 18 and 92
#        predicted now that the state increments are dense) and compiled CUDA graphs with the matrix-product 1x1
#        convolutions (bf16-cl-cudagraphs-fused-mm; 10.7 and 43.6 ms without them), at 320x448 and 1024x1024
#     2. the same compiled graphs with the matrix products autotuned among cuBLAS and Triton templates that take
#        SiLU, bias and residual adds into the product (bf16-cl-cudagraphs-fused-mm-gemmtune), at 320x448: the
#        elementwise traffic between convolutions is what both targets need cut (BENCHMARKS.md)
#     3. where the compiled pass's time goes at 320x448, profiled: torch.compile default mode (no CUDA graphs, so
#        the profiler sees Inductor's kernels) with the matrix products
#   bash benchmarks/gpu_session.sh checks   # about 9 minutes at most (limits 110 + 60 + 60 + 120 + 200 s)
#     4. train.py through Lightning with bf16-mixed, channels_last, torch.compile reduce-overhead and the update
#        decided on the device (model.speed.sync_free; the third call's 174 images/s used the module's step
#        directly): configs/tiny.yaml on scikit-image's photographs
#     5. the tiled loop on a 2048x2048 image (shipped natural prior, 16 tiles of 256 per batch, 10 iterations):
#        fp32, --fast (graph replay now reaches the tiles) and --fast --compile reduce-overhead (one compilation
#        per run now, not one per number of tiles still running)
#     6. the CUDA tests of the fast paths (graph replay, compiled JPMAP and training, bf16 copies, matrix products,
#        no host synchronisation in a sync-free update, a folder restored with --fast)
#   bash benchmarks/gpu_session.sh sizes    # about 9.5 minutes at most (limits 250 + 200 + 120 s)
#     7. 512x512 and 2048x2048 compiled (bf16-cl-cudagraphs-fused-mm), and 8 images of 320x448 per call, per image
#    10. restore.py on a folder, 1 and 4 images per batch, against restore.py image by image
#   bash benchmarks/gpu_session.sh train    # about 9.5 minutes at most (limits 400 + 170 s)
#     8. the preset's training at batch 16 of 128x128, bf16 + channels_last compiled with CUDA graphs: core step,
#        train.py's update with the skip decision read on the host (the third call: 174 images/s) and decided on
#        the device (speed.sync_free: the 31.7 ms from core to full were the synchronisation's share, or not)
#     9. train.py on the preset with the same settings through Lightning, as a user runs it: its logged pace
# benchmarks/gpu_train.sh (the face prior) needs a session of its own.
#
# From this machine (the device tool's run), carrying the wheels the device's python lacks (jsonargparse for
# train.py's CLI):
#   pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client
#   run(command="bash benchmarks/gpu_session.sh speed", carry=[".whl"], timeout_s=590)
#   run(command="bash benchmarks/gpu_session.sh checks", carry=[".whl"], timeout_s=590)
#   run(command="bash benchmarks/gpu_session.sh sizes", timeout_s=590)
#   run(command="bash benchmarks/gpu_session.sh train", carry=[".whl"], timeout_s=590)
#   (no images needed: the speed rows use random inputs, tiny.yaml scikit-image's photographs, the tiled rows a
#   synthetic image and the shipped prior)
# Everything lands in $OUT (8 files at most come back): gpu.txt, speed.json, speed.log, profile.txt (speed);
# gpu.txt, train.log, large.log, cuda_tests.log (checks); gpu.txt, speed.json, speed.log, folder.log (sizes); gpu.txt,
# speed.json, speed.log, train.log (train). A step that fails or runs out of time leaves its log and the next step
# runs.
# Smoke run on a CPU (no CUDA; eager variants stand in for the compiled ones), for each PART:
#   GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh PART
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-}
if [ "$PART" != speed ] && [ "$PART" != checks ] && [ "$PART" != sizes ] && [ "$PART" != train ]; then
    echo "usage: bash benchmarks/gpu_session.sh speed|checks|sizes|train (see the header)" >&2; exit 2
fi
OUT=${OUT:-out/gpu_session}
mkdir -p "$OUT"
export HF_DATASETS_OFFLINE=1
source benchmarks/device_python.sh  # PY, PYTHONPATH (and the carried wheels)
if [ "${GPU_SESSION_SMOKE:-0}" = 1 ]; then  # tiny settings: checks the plumbing, not the GPU
    SPEED=(--device cpu --iters 1 --warmup 1 --threads 1)
    FAST=(bf16-cl-fused-mm); FAST_SIZES=(64x64 64x128); TUNED=(bf16-cl-fused); TUNED_SIZES=(64x64)
    PROFILED=(bf16-cl-fused); PROFILE_SIZES=(64x64)
    SIZED=(bf16-cl-fused-mm); SIZED_SIZES=(64x64 128x128); BATCHED=(bf16-cl-fused-mm); BATCHED_SIZE=64x64
    FOLDER=(--limit 2 --crop 64 "--extra=--iterations 2 --accelerator cpu")
    TRAIN=(--trainer.accelerator cpu --trainer.precision bf16-mixed --model.speed.channels_last true
           --model.speed.sync_free true --trainer.max_steps 10)
    TESTS=(tests/restore/test_jpmap_speed.py -k "pointwise")
    TRAIN_ROWS=(--train-variants bf16-cl --train-batch 1 --train-size 64)
    PRESET=(--trainer.accelerator cpu --model.speed.channels_last true --model.speed.sync_free true
            --trainer.max_steps 3 --data.init_args.batch_size 1 --data.init_args.patch_size 64
            --data.init_args.num_workers 0)
    LARGE=(--accelerator cpu --processes 1 --size 256 --tile 128 --tiles-per-batch 4 --iters 2)
else
    SPEED=(--cudnn-benchmark)
    FAST=(bf16-cl-fused-mm-graph bf16-cl-cudagraphs-fused-mm); FAST_SIZES=(320x448 1024x1024)
    TUNED=(bf16-cl-cudagraphs-fused-mm-gemmtune); TUNED_SIZES=(320x448)
    PROFILED=(bf16-cl-compile-fused-mm); PROFILE_SIZES=(320x448)
    SIZED=(bf16-cl-cudagraphs-fused-mm); SIZED_SIZES=(512x512 2048x2048)
    BATCHED=(bf16-cl-fused-mm-graph bf16-cl-cudagraphs-fused-mm); BATCHED_SIZE=320x448
    FOLDER=(--limit 4 --crop 320 "--extra=--iterations 10 --accelerator gpu")
    TRAIN=(--trainer.accelerator gpu --trainer.precision bf16-mixed --model.speed.channels_last true
           --model.speed.compile true --model.speed.compile_mode reduce-overhead --model.speed.sync_free true
           --trainer.max_steps 60)
    # JPMAP's compiled tests, the slowest, last
    TESTS=(tests/hvae/test_update.py tests/hvae/test_training_speed.py tests/restore/test_jpmap_speed.py
           tests/restore/test_folder.py::test_folder_fast_path_on_cuda_matches_fp32)
    TRAIN_ROWS=(--train-variants bf16-cl-cudagraphs)
    PRESET=(--trainer.accelerator gpu --model.speed.channels_last true --model.speed.compile true
            --model.speed.compile_mode reduce-overhead --model.speed.sync_free true --trainer.max_steps 500
            --data.init_args.batch_size 16 --data.init_args.num_workers 6)
    LARGE=(--accelerator gpu --processes 1 --size 2048 --tile 256 --tiles-per-batch 16 --iters 10 --prior priors/natural.pt)
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi";
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/gpu.txt"

summarise() {  # summarise RUN_DIR LOG: a train.py run's logged losses and pace, first and last values
"$PY" - "$1" >> "$OUT/$2" 2>&1 <<'PYEOF'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for path in sorted(glob.glob(sys.argv[1] + "/**/events.out.tfevents.*", recursive=True)):
    acc = EventAccumulator(path); acc.Reload()
    for tag in [t for t in acc.Tags()["scalars"] if "loss" in t or "speed/" in t or "skipped_total" in t]:
        values = [e.value for e in acc.Scalars(tag)]
        print(f"# {tag}: {len(values)} values, first {values[0]:.4g}, last {values[-1]:.4g}, all {values}")
PYEOF
}

step() {  # step SECONDS LOG COMMAND...: run with a time limit, log its output, note its exit status
    local limit=$1 log=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >> "$OUT/$log" 2>&1
    echo "# exit $? after $((SECONDS - t0)) s (limit $limit s): $*" >> "$OUT/$log"
}

if [ "$PART" = speed ]; then
# 1-3. speed, alone on the GPU; one JSON, rewritten after every row
J=(--json "$OUT/speed.json")
step 170 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${FAST_SIZES[@]}" \
    --variants "${FAST[@]}"
step 290 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${TUNED_SIZES[@]}" \
    --variants "${TUNED[@]}"
step 90 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${PROFILE_SIZES[@]}" \
    --variants "${PROFILED[@]}" --profile "$OUT/profile.txt"
ls -la "$OUT"
exit 0
fi

if [ "$PART" = train ]; then
# 8. the preset's training rows: core, full (host decision), full sync-free (device decision)
step 400 speed.log "$PY" benchmarks/speed_gpu.py --only train --json "$OUT/speed.json" "${SPEED[@]}" "${TRAIN_ROWS[@]}"
# 9. train.py as a user runs it on the preset (scikit-image's photographs, batch 16 of 128x128 patches): the pace
#    TrainingSpeed logs every 50 steps, after a compilation that Inductor's cache may shorten after step 8
rm -rf /tmp/gpu_session_preset
step 170 train.log "$PY" train.py fit --config configs/patchvdvae.yaml "${PRESET[@]}" --data.init_args.root builtin \
    --trainer.log_every_n_steps 50 --trainer.enable_progress_bar false --trainer.default_root_dir /tmp/gpu_session_preset
summarise /tmp/gpu_session_preset train.log
ls -la "$OUT"
exit 0
fi

if [ "$PART" = sizes ]; then
# 7. the issue's other sizes compiled (512x512 and 2048x2048 ran eager and graph-replayed only), and 8 images of
#    320x448 per call (a data-set sweep: the small levels' launches shared by the batch), per image
J=(--json "$OUT/speed.json")
step 250 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "${SIZED_SIZES[@]}" \
    --variants "${SIZED[@]}"
step 200 speed.log "$PY" benchmarks/speed_gpu.py --only jpmap "${J[@]}" "${SPEED[@]}" --sizes "$BATCHED_SIZE" \
    --variants "${BATCHED[@]}" --jpmap-batch 8
# 10. restore.py on a folder (4 crops of scikit-image's photographs, fp32) with 1 and 4 images per batch, against
#     restore.py run image by image: the GPU's default --images-per-batch (4) is not timed yet
step 120 folder.log "$PY" benchmarks/folder_restore.py --folder builtin "${FOLDER[@]}" --batches 1 4 \
    --out /tmp/gpu_session_folder
ls -la "$OUT"
exit 0
fi

# 4. train.py as a user runs it, compiled with CUDA graphs (the tiny config: its compilation takes seconds, not
#    the preset's 3 minutes); the last lines of its log say whether the steps ran and the loss stayed finite
rm -rf /tmp/gpu_session_tiny
step 110 train.log "$PY" train.py fit --config configs/tiny.yaml "${TRAIN[@]}" --trainer.val_check_interval 20 \
    --trainer.log_every_n_steps 5 --trainer.enable_progress_bar false --trainer.default_root_dir /tmp/gpu_session_tiny
summarise /tmp/gpu_session_tiny train.log

# 5. the tiled loop, fp32 against the fast paths
step 60 large.log "$PY" benchmarks/restore_large.py "${LARGE[@]}"
step 60 large.log "$PY" benchmarks/restore_large.py "${LARGE[@]}" --fast
step 120 large.log "$PY" benchmarks/restore_large.py "${LARGE[@]}" --fast --compile reduce-overhead

# 6. the fast paths' CUDA tests (skipped on a CPU)
step 200 cuda_tests.log "$PY" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}"
ls -la "$OUT"
