#!/usr/bin/env bash
# tools/gpu_sbs.sh - side-by-side speed of two builds of the CUDA backend in one GPU call, with a
# quick correctness gate first. Run on the GPU machine from the repository root (device `run`,
# carry .gpufinal, BASE's folder and .gpudeps):
#
#   BASE=".gpubase [.gpuprev ...]" tools/gpu_sbs.sh
#
# .gpufinal holds bench_gpu and check_cuda_backend of the new commit (tools/gpu_verify.sh pack),
# each folder of BASE the bench_gpu (and COMMIT) of an older one (copied from .gpufinal before
# packing the next). Steps:
#   1. check_cuda_backend of .gpufinal: golden, api and vs_cpu (defaults), vs_cpu with
#      DS4SCI_CUDA_SPLIT=1 (the merged backward on every case) and each of VARIANT_ENVS.
#   2. bench_gpu of the reference model, BENCH_PROFILE=0 (no events), at SBS_SIZES: each base
#      build, the new one and the new one under each of VARIANT_ENVS, interleaved, REPS rounds.
#   3. bench_gpu of the new build with its stage profile (PROFILE_SIZES, DS4SCI_CUDA_GRAPH=0 so that
#      small sizes have stage times too), and with PROFILE=1
#      ncu on layer 5's edge kernels (tools/gpu_run.sh profile).
# Environment: OUT (files back), BASE, SBS_SIZES (default "1000 10000 1000000"), REPS (2),
# STEPS (timed steps per size, 3), VARIANT_ENVS (";"-separated env sets of the new build run
# side by side, e.g. "DS4SCI_CUDA_PAIR=0"), PROFILE_SIZES (default "1000000"), PROFILE (0).
set -u -o pipefail
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-out}
read -r -a BASES <<< "${BASE:?BASE: folders with the base builds}"
LG=/tmp/gpu_sbs_logs
# shellcheck source=tools/gpu_lib.sh
. "$ROOT/tools/gpu_lib.sh"
{ date -u; echo "new $(head -1 "$B/COMMIT")";
  for a in "${BASES[@]}"; do echo "base $a $(head -1 "$ROOT/$a/COMMIT")"; done;
  nvidia-smi --query-gpu=index,name,driver_version,clocks.sm --format=csv; } >> "$S" 2>&1
IFS=';' read -r -a VARS <<< "${VARIANT_ENVS:-}"

T=$LG/tests.log
ck golden 60 CK_RUN_CASE=golden
ck api 60 CK_RUN_CASE=api
ck vs_cpu 150 CK_RUN_CASE=vs_cpu
ck vs_cpu_split1 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_SPLIT=1
for v in "${VARS[@]}"; do
    # shellcheck disable=SC2086
    ck "vs_cpu_split1 $v" 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_SPLIT=1 $v
done

SIZES=${SBS_SIZES:-"1000 10000 1000000"}
for r in $(seq 1 "${REPS:-2}"); do
    for a in "${BASES[@]}"; do
        # shellcheck disable=SC2086
        BENCH_PROFILE=0 timeout 120 "$ROOT/$a/bench_gpu" tests/golden/typical.safetensors \
            "${STEPS:-3}" $SIZES > "$LG/sbs_base_${a#.}_$r.log" 2>&1
        t "sbs base $a round $r" $?
    done
    # shellcheck disable=SC2086
    BENCH_PROFILE=0 timeout 120 "$B/bench_gpu" tests/golden/typical.safetensors "${STEPS:-3}" $SIZES \
        > "$LG/sbs_new_$r.log" 2>&1
    t "sbs new round $r" $?
    i=0
    for v in "${VARS[@]}"; do
        i=$((i + 1))
        # shellcheck disable=SC2086
        env BENCH_PROFILE=0 $v timeout 120 "$B/bench_gpu" tests/golden/typical.safetensors \
            "${STEPS:-3}" $SIZES > "$LG/sbs_var${i}_$r.log" 2>&1
        t "sbs new $v round $r" $?
    done
done
# shellcheck disable=SC2086
DS4SCI_CUDA_GRAPH=0 timeout 120 "$B/bench_gpu" tests/golden/typical.safetensors "${STEPS:-3}" \
    ${PROFILE_SIZES:-1000000} \
    > "$LG/bench_profile.log" 2>&1
t "bench with the stage profile" $?
if [ "${PROFILE:-0}" = 1 ]; then
    OUT=$LG/ncu PREBUILT=.gpufinal PREBUILT_ROOT=$(sed -n 2p "$B/COMMIT") \
        timeout 150 bash tools/gpu_run.sh profile > "$LG/profile.log" 2>&1
    t profile $?
fi

echo "==== summary"; cat "$S"
grep -hE "^====|^[0-9]+%|:F:|:E:" "$T"
for f in "$LG"/sbs_*.log; do echo "== $(basename "$f")"; grep -vE "^#" "$f" | grep -E "^ +[0-9]+ " ; done
grep -vE "^#" "$LG/bench_profile.log" | head -40
cat "$LG"/ncu/ncu_opmix.txt 2>/dev/null | head -60
