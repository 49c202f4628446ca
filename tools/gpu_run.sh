#!/usr/bin/env bash
# gpu_run.sh - the one script that builds, tests and benchmarks the CUDA backend on the GPU
# machine, in one call. Run from the repository root:
#
#   tools/gpu_run.sh [all|test|bench|sanitize] [bench sizes ...]
#
# Environment:
#   OUT            folder for logs (default ./gpu-out)
#   DEPS           folder with check/cJSON headers, libs and .pc files when the machine lacks
#                  them (default ./.gpudeps if it exists; see docs/gpu.md "Running it")
#   PREBUILT       folder with prebuilt check_cuda_backend and bench_gpu (skip the build)
#   PREBUILT_ROOT  the source root they were built in (their test-data path); linked to here
#   BENCH_STEPS    timed steps per size (default 10)
#   JOBS           build parallelism (default: all cores)
# Writes $OUT/build.log, test.log, memcheck.log, racecheck.log, bench.log, env.log and prints a
# short summary last.
set -u -o pipefail
MODE=${1:-all}
shift || true
SIZES=${*:-"1000 10000 100000 1000000"}
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
DEPS=${DEPS:-$ROOT/.gpudeps}
JOBS=${JOBS:-$(nproc)}
STEPS=${BENCH_STEPS:-10}
BUILD=${BUILD:-$ROOT/build-cuda-device}

if [ -d "$DEPS" ]; then
    export PKG_CONFIG_PATH="$DEPS/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$DEPS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

{
    date -u
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    nvcc --version | tail -2
    nproc
} > "$OUT/env.log" 2>&1

BIN=""
if [ -n "${PREBUILT:-}" ] && [ -x "$PREBUILT/check_cuda_backend" ]; then
    BIN=$PREBUILT
    if ldd "$BIN/bench_gpu" "$BIN/check_cuda_backend" | grep -q "not found"; then
        echo "prebuilt binaries do not run here; building" | tee -a "$OUT/env.log"
        BIN=""
    fi
fi
if [ -z "$BIN" ]; then
    ( cmake -S "$ROOT" -B "$BUILD" -DDS4SCI_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
      cmake --build "$BUILD" -j "$JOBS" --target check_cuda_backend bench_gpu ) > "$OUT/build.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -40 "$OUT/build.log"
        echo "BUILD FAILED"
        exit 1
    fi
    BIN=$BUILD
    [ -x "$BUILD/tests/check_cuda_backend" ] && BIN_TEST=$BUILD/tests/check_cuda_backend
    BIN_BENCH=$BUILD/examples/bench_gpu
else
    BIN_TEST=$BIN/check_cuda_backend
    BIN_BENCH=$BIN/bench_gpu
fi
BIN_TEST=${BIN_TEST:-$BIN/check_cuda_backend}
BIN_BENCH=${BIN_BENCH:-$BIN/bench_gpu}
# binaries built elsewhere look for test data under the path they were built in
if [ -n "${PREBUILT_ROOT:-}" ] && [ "$PREBUILT_ROOT" != "$ROOT" ] && [ ! -e "$PREBUILT_ROOT" ]; then
    mkdir -p "$(dirname "$PREBUILT_ROOT")" && ln -s "$ROOT" "$PREBUILT_ROOT"
fi

summary=()
if [ "$MODE" = all ] || [ "$MODE" = test ]; then
    start=$(date +%s)
    ( cd "$ROOT/tests" && timeout ${TEST_TIMEOUT:-420} "$BIN_TEST" ) > "$OUT/test.log" 2>&1
    rc=$?
    summary+=("tests: rc=$rc ($(( $(date +%s) - start )) s): $(grep -E '^[0-9]+%' "$OUT/test.log" | tail -1)")
fi
if [ "$MODE" = all ] || [ "$MODE" = sanitize ]; then
    start=$(date +%s)
    ( cd "$ROOT/tests" && CK_RUN_CASE=golden timeout 300 compute-sanitizer --tool memcheck \
        --leak-check full --error-exitcode 9 "$BIN_TEST" ) > "$OUT/memcheck.log" 2>&1
    rc=$?
    summary+=("memcheck (golden): rc=$rc ($(( $(date +%s) - start )) s): $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)")
    start=$(date +%s)
    ( cd "$ROOT/tests" && CK_RUN_CASE=api timeout 200 compute-sanitizer --tool racecheck \
        --error-exitcode 9 "$BIN_TEST" ) > "$OUT/racecheck.log" 2>&1
    rc=$?
    summary+=("racecheck (api): rc=$rc ($(( $(date +%s) - start )) s): $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log" | tail -1)")
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
    start=$(date +%s)
    timeout ${BENCH_TIMEOUT:-400} "$BIN_BENCH" "$ROOT/tests/golden/typical.safetensors" "$STEPS" $SIZES \
        > "$OUT/bench.log" 2>&1
    rc=$?
    summary+=("bench: rc=$rc ($(( $(date +%s) - start )) s)")
fi
echo "==== tail of test.log"
tail -25 "$OUT/test.log" 2>/dev/null
echo "==== bench.log"
cat "$OUT/bench.log" 2>/dev/null
echo "==== summary"
for s in "${summary[@]}"; do echo "$s"; done
