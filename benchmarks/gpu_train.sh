#!/usr/bin/env bash
# One device call that trains a prior on the lent GPU and brings back its export, for issue 5's GPU-trained priors.
# A call has at most 10 minutes, and a session 15 minutes of device time, start-up included, so the run is short
# by design: TRAIN_SECONDS of training (default 420), then benchmarks/pick_export.py chooses between the last
# checkpoint's EMA and raw weights by their restoration score on the validation split.
#
# The face prior (configs/faces.yaml). From this machine:
#   python benchmarks/pack_faces.py ../shared/data/train/faces-UTKFace .carry/faces64    # 43 MiB of 64x64 JPEGs
#   mkdir -p .carry/kernels && cp ../shared/data/kernels/* .carry/kernels/
#   run(command="bash benchmarks/gpu_train.sh", carry=[".carry/faces64", ".carry/kernels", ".whl"], timeout_s=600)
# In a session that already ran gpu_session.sh (about 7 minutes of its 15), start with TRAIN_SECONDS=300
# (the call then takes about 6 minutes: start-up, training, pick_export).
# Other priors: CONFIG=configs/natural.yaml DATA=.carry/CBSD432 KIND=patches (carry that folder instead).
# Across calls and sessions: copy the prior.pt a call brought back to .carry/resume.pt and carry it too (6 MB;
# carry=[".carry/faces64", ".carry/kernels", ".carry/resume.pt", ".whl"]).
# The next call warm-starts from it (--model.init_from: weights into the model and its EMA, a fresh optimiser
# state) at the schedule's step it reached (its meta global_step -> --model.optim.start_step) and trains on to
# STEPS. A full Lightning checkpoint would resume exactly, but with its optimiser state and fp32 weights it is
# about 40 MB: over the 16 MiB a returned file may have, and over the carry limit beside the faces.
# STEPS (default 6000) is also the learning-rate schedule's length: the run stops at STEPS or at TRAIN_SECONDS,
# whichever comes first; the H200 trained configs/natural.yaml at about 1,100 images/s (batch 64), so 6,000
# steps of batch 64 need about 6 minutes at that pace.
# Comes back in $OUT: prior.pt (the pick), pick.log, train.log, events.tfevents (TensorBoard), config.yaml.
# Smoke run on a CPU: GPU_TRAIN_SMOKE=1 DATA=some/faces bash benchmarks/gpu_train.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_train}
mkdir -p "$OUT"
export HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
source benchmarks/device_python.sh  # PY, PYTHONPATH (and the carried wheels)
CONFIG=${CONFIG:-configs/faces.yaml}
DATA=${DATA:-.carry/faces64}
KIND=${KIND:-faces}
KERNELS=${KERNELS:-.carry/kernels}
STEPS=${STEPS:-6000}
TRAIN_SECONDS=${TRAIN_SECONDS:-420}
RUN=${RUN:-/tmp/gpu_train_run}
EXTRA=()
if [ "${GPU_TRAIN_SMOKE:-0}" = 1 ]; then  # the plumbing on a CPU: a few steps, few images
    STEPS=${STEPS_SMOKE:-4}; TRAIN_SECONDS=120
    EXTRA=(--trainer.accelerator cpu --trainer.precision 32-true --trainer.val_check_interval 2
           --trainer.limit_val_batches 1 --data.init_args.batch_size 4 --data.init_args.num_workers 0)
    PICK=(--images 8 --restore-images 1)
else
    PICK=()
fi
[ -d "$DATA" ] || { echo "error: no data folder $DATA; see this script's header for what to carry" >&2; exit 2; }
RESUME=${RESUME:-.carry/resume.pt}
START=0
if [ -f "$RESUME" ]; then
    START=$("$PY" -c "import sys; from hvae.export import prior_meta; print(int(prior_meta(sys.argv[1])['global_step']))" \
        "$RESUME") || { echo "error: $RESUME has no global_step in its meta; pass RESUME=none to start afresh" >&2; exit 2; }
    [ "$START" -lt "$STEPS" ] || { echo "error: $RESUME is at step $START, not below STEPS=$STEPS; raise STEPS" >&2; exit 2; }
    EXTRA+=(--model.init_from "$RESUME" --model.optim.start_step "$START")
fi
rm -rf "$RUN"
mins=$(printf "%02d:%02d" $((TRAIN_SECONDS / 60)) $((TRAIN_SECONDS % 60)))
t0=$SECONDS
echo "# steps $START -> $STEPS (schedule length $STEPS), at most $TRAIN_SECONDS s" > "$OUT/train.log"
"$PY" train.py fit --config "$CONFIG" --data.init_args.source "$DATA" --trainer.default_root_dir "$RUN" \
    --trainer.max_steps $((STEPS - START)) --model.optim.decay_steps "$STEPS" --trainer.max_time "00:00:$mins" \
    "${EXTRA[@]}" >> "$OUT/train.log" 2>&1
echo "# train.py exit $? after $((SECONDS - t0)) s" >> "$OUT/train.log"
ckpt=$(ls -t "$RUN"/lightning_logs/version_*/checkpoints/*.ckpt 2>/dev/null | head -1)
if [ -n "$ckpt" ]; then
    "$PY" benchmarks/pick_export.py "$ckpt" "$DATA" "$OUT/prior.pt" --kind "$KIND" --kernels "$KERNELS" \
        "${PICK[@]}" > "$OUT/pick.log" 2>&1
    echo "# pick_export exit $? on $ckpt" >> "$OUT/pick.log"
else
    echo "no checkpoint was written (see train.log)" > "$OUT/pick.log"
    cp "$RUN"/lightning_logs/version_*/prior.pt "$OUT/prior_ema_end.pt" 2>/dev/null
fi
cp "$(ls -t "$RUN"/lightning_logs/version_*/events.out.tfevents.* 2>/dev/null | head -1)" "$OUT/events.tfevents" 2>/dev/null
cp "$RUN"/lightning_logs/version_*/config.yaml "$OUT/config.yaml" 2>/dev/null
tail -n 3 "$OUT/train.log"; cat "$OUT/pick.log"
ls -la "$OUT"
