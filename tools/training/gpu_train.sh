#!/usr/bin/env bash
# gpu_train.sh - train two variants of the Si ET at once, one per GPU, in ONE device call, and
# leave each variant's best checkpoint (lowest validation loss) and its metrics in $OUT.
#
# Run from the repository root on the GPU machine (used for the 5.0 A model, docs/si_model.md):
#
#   OUT=... TRAIN_S=500 tools/training/gpu_train.sh
#
# Environment (all optional):
#   OUT      where results go (default ./gpu-train-out): A_best.ckpt, B_best.ckpt, runs.tar.gz
#            (per variant: train.log, metrics.csv, input.yaml), env.log  (4 files)
#   DATA     folder with si_sw.extxyz, splits.npz and (variant B) warm.ckpt (default ./.sidata);
#            copied per variant, since each run writes its processed/ cache into its root
#   TRAIN_S  seconds each training is allowed before SIGINT (Lightning stops cleanly; default 500)
#   WHEELS   torchmd_net 3.1.0 + ase wheels, installed to /tmp/site when torchmdnet is missing
#   GPUS     "0 1": GPU of variant A and of variant B (one GPU: "0 0")
#   A_ARGS, B_ARGS  extra train.py arguments of each variant (defaults below)
# (Version 3: A_ARGS/B_ARGS with --load-weights DATA/warm.ckpt --head-vector-norm-eps EPS, README.md.)
# Variant A: from scratch, batch 16, lr 5e-4 (300 warm-up steps, x0.7 on plateau, patience 4).
# Variant B: warm start from the 4.5 A model's weights (warm_start.py rewrites its RBF buffers
#            for 5.0 A), batch 16, lr 3e-4 (100 warm-up steps, x0.6 on plateau, patience 3).
set -u -o pipefail
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-train-out}
DATA=${DATA:-$ROOT/.sidata}
TRAIN_S=${TRAIN_S:-500}
WHEELS=${WHEELS:-$ROOT/.whl}
read -r GPU_A GPU_B <<< "${GPUS:-0 1}"
A_ARGS=${A_ARGS:-"--batch-size 16 --lr 5e-4"}
B_ARGS=${B_ARGS:-"--load-weights DATA/warm.ckpt --batch-size 16 --lr 3e-4 --lr-warmup-steps 100 --lr-patience 3 --lr-factor 0.6"}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import torchmdnet" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); commit: $(git rev-parse HEAD 2>/dev/null)"
    echo "train_s: $TRAIN_S; A ($GPU_A): $A_ARGS; B ($GPU_B): $B_ARGS"
    nvidia-smi --query-gpu=index,name,memory.total --format=csv 2>&1
    "$PY" -c "import torch, torchmdnet; print('torch', torch.__version__, 'torchmdnet', torchmdnet.__file__)"
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

W=/tmp/si-train
rm -rf "$W"; mkdir -p "$W"
pids=()
for v in A B; do
    gpu=GPU_$v; args=${v}_ARGS
    mkdir -p "$W/$v/data" "$W/$v/run"
    cp "$DATA"/si_sw.extxyz "$DATA"/splits.npz "$W/$v/data/"
    [ -f "$DATA/warm.ckpt" ] && cp "$DATA/warm.ckpt" "$W/$v/data/"
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=${!gpu} OMP_NUM_THREADS=4 timeout -s INT -k 30 "$TRAIN_S" \
        "$PY" "$ROOT/tools/training/train.py" --conf "$ROOT/tools/training/si_et.yaml" \
        --dataset-root "$W/$v/data" --splits "$W/$v/data/splits.npz" --log-dir "$W/$v/run" \
        ${!args//DATA/$W/$v/data} > "$W/$v/train.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "training pid $p: rc=$?"; done

for v in A B; do
    r=$W/$v/run
    cp "$W/$v/train.log" "$r/" 2>/dev/null
    # checkpoints are named epoch=E-val_loss=L[-test_loss=T].ckpt; the best has the lowest L
    best=$(ls "$r"/epoch=*.ckpt 2>/dev/null |
           sed -n 's/.*val_loss=\([0-9.]*[0-9]\).*/\1 &/p' | sort -g | head -1 | cut -d' ' -f2)
    if [ -n "$best" ]; then
        cp "$best" "$OUT/${v}_best.ckpt"
        basename "$best" > "$r/best_name.txt"
        echo "$v best: $(basename "$best")"
    else
        echo "$v: no checkpoint"; tail -30 "$W/$v/train.log"
    fi
    tail -3 "$W/$v/train.log"
done
tar -C "$W" -czf "$OUT/runs.tar.gz" \
    $(cd "$W" && ls -d */run/metrics.csv */run/input.yaml */run/train.log */run/best_name.txt 2>/dev/null)
ls -la "$OUT"
