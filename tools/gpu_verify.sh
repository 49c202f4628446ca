#!/usr/bin/env bash
# tools/gpu_verify.sh - everything the CUDA path is checked and measured with, in one H200 call,
# from binaries built on the development machine (the GPU machine has no Debian check/cJSON and
# no LAMMPS). Two modes:
#
#   tools/gpu_verify.sh pack [REV]   here: a clean worktree of REV (default HEAD) in /tmp/ds4sci-verify,
#                                    built with CUDA and against LAMMPS; binaries into .gpufinal/
#                                    (check_cuda_backend, bench_gpu) and .lammps-gpu/bin/ (lmp,
#                                    liblammps.so.0, ds4sciplugin.so); about 8 minutes on 2 cores.
#   tools/gpu_verify.sh run          there (device `run`, carry .gpufinal .lammps-gpu/bin .gpudeps):
#                                    check_cuda_backend (golden, api, vs_cpu; vs_cpu also with
#                                    DS4SCI_CUDA_CHECKPOINT=0; golden with DS4SCI_CUDA_EDGE=unfused),
#                                    memcheck (golden), bench_gpu 1k..1M, LAMMPS gpu tests and the
#                                    1M-atom LAMMPS benchmarks, then racecheck with what time is left.
#
# Environment for run: OUT (files back; at most 8 are written), BUDGET (seconds, default 420),
# SIZES (bench_gpu sizes, default "1000 10000 100000 1000000").
# LAMMPS for pack: LMPBUILD (a LAMMPS build folder with lmp and liblammps.so.0 built with
# PKG_PLUGIN, MANYBODY and OPENMP: DS4SCI_LAMMPS_OPENMP=1 tools/build_lammps.sh), LAMMPS_SOURCE_DIR.
set -u -o pipefail
MODE=${1:-run}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "$MODE" = pack ]; then
    REV=${2:-HEAD}
    W=/tmp/ds4sci-verify
    set -e
    if [ -d "$W" ]; then git -C "$W" checkout -q --detach "$(git -C "$ROOT" rev-parse "$REV")"
    else git -C "$ROOT" worktree add -q --detach "$W" "$REV"; fi
    cmake -S "$W" -B "$W/build" -DDS4SCI_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
        -DLAMMPS_SOURCE_DIR="${LAMMPS_SOURCE_DIR:?}" -DLAMMPS_BINARY="${LMPBUILD:?}/lmp" > /dev/null
    nice make -C "$W/build" -j "${JOBS:-2}" check_cuda_backend bench_gpu ds4sciplugin > /dev/null
    mkdir -p "$ROOT/.gpufinal" "$ROOT/.lammps-gpu/bin"
    cp "$W/build/tests/check_cuda_backend" "$W/build/examples/bench_gpu" "$ROOT/.gpufinal/"
    cp "$W/build/plugin/ds4sciplugin.so" "$LMPBUILD/lmp" "$LMPBUILD/liblammps.so.0" "$ROOT/.lammps-gpu/bin/"
    strip --strip-unneeded "$ROOT"/.gpufinal/check_cuda_backend "$ROOT"/.gpufinal/bench_gpu \
        "$ROOT"/.lammps-gpu/bin/ds4sciplugin.so "$ROOT"/.lammps-gpu/bin/liblammps.so.0
    { git -C "$W" rev-parse HEAD; echo "$W"; } > "$ROOT/.gpufinal/COMMIT"
    for d in .gpufinal .lammps-gpu; do
        grep -qx "/$d/" "$ROOT/.git/info/exclude" || echo "/$d/" >> "$ROOT/.git/info/exclude"
    done
    du -sh "$ROOT/.gpufinal" "$ROOT/.lammps-gpu/bin"
    exit 0
fi

# ---- run, on the GPU machine ----
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-420}
SIZES=${SIZES:-"1000 10000 100000 1000000"}
B=$ROOT/.gpufinal
export LD_LIBRARY_PATH=$ROOT/.gpudeps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# the test binary reads its data under the path it was built in
BUILT=$(sed -n 2p "$B/COMMIT" 2>/dev/null)
[ -n "$BUILT" ] && [ ! -e "$BUILT" ] && mkdir -p "$(dirname "$BUILT")" && ln -s "$ROOT" "$BUILT"
cd "$ROOT"
T0=$(date +%s)
S=$OUT/summary.txt
t() { echo "$1 rc=$2 t=$(( $(date +%s) - T0 ))s" | tee -a "$S"; }
left() { [ $(( $(date +%s) - T0 )) -lt "$1" ]; }
{ date -u; cat "$B/COMMIT"; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } >> "$S" 2>&1

T=$OUT/tests.log
: > "$T"
for c in golden api vs_cpu; do
    echo "==== $c" >> "$T"
    (cd tests && CK_RUN_CASE=$c timeout 150 "$B/check_cuda_backend") >> "$T" 2>&1; t "test_$c" $?
done
echo "==== vs_cpu, DS4SCI_CUDA_CHECKPOINT=0" >> "$T"
(cd tests && DS4SCI_CUDA_CHECKPOINT=0 CK_RUN_CASE=vs_cpu timeout 100 "$B/check_cuda_backend") >> "$T" 2>&1
t test_vs_cpu_nockpt $?
echo "==== golden, DS4SCI_CUDA_EDGE=unfused" >> "$T"
(cd tests && DS4SCI_CUDA_EDGE=unfused CK_RUN_CASE=golden timeout 60 "$B/check_cuda_backend") >> "$T" 2>&1
t test_golden_unfused $?
(cd tests && CK_RUN_CASE=golden timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$B/check_cuda_backend") > "$OUT/memcheck.log" 2>&1
t memcheck $?
# shellcheck disable=SC2086
timeout 150 "$B/bench_gpu" tests/golden/typical.safetensors 3 $SIZES > "$OUT/bench_gpu.log" 2>&1
t bench_gpu $?
L=/tmp/gpu_verify_lammps
OUT=$L SI_NVE=0 BENCH_SI="" BENCH_REF="" OOM_CELLS=0 timeout 200 bash tools/gpu_lammps.sh test \
    > "$OUT/lammps.log" 2>&1
t lammps_test $?
if left $(( BUDGET - 130 )); then
    OUT=$L SI_NVE=0 OOM_CELLS=0 BENCH_SI="50 20 10" BENCH_REF="100 3 2" timeout 120 \
        bash tools/gpu_lammps.sh bench >> "$OUT/lammps.log" 2>&1
    t lammps_bench $?
fi
tar czf "$OUT/lammps_logs.tgz" -C "$L" . 2>/dev/null
rest=$(( BUDGET - ($(date +%s) - T0) - 10 ))
if [ "$rest" -gt 30 ]; then
    timeout "$rest" compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 9 \
        "$B/bench_gpu" tests/golden/typical.safetensors 1 216 > "$OUT/racecheck.log" 2>&1
    t "racecheck (${rest}s allowed)" $?
fi
echo "==== summary"; cat "$S"
grep -hE "^====|^[0-9]+%|:F:|:E:" "$T"
grep -h "ERROR SUMMARY" "$OUT/memcheck.log"
grep -vE "^#" "$OUT/bench_gpu.log" | head -40
tail -n 25 "$OUT/lammps.log"
