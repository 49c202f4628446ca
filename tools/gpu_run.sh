#!/usr/bin/env bash
# gpu_run.sh - the one script that builds, tests and benchmarks the CUDA backend on the GPU
# machine, in one call. Run from the repository root:
#
#   tools/gpu_run.sh [all|test|bench|sanitize|profile|kernels] [bench sizes ...]
#
# profile (not part of all): ncu on layer 5's fused edge kernels (forward, merged backward) at 10,648 atoms
# (launch stats, occupancy, warp states, schedulers, compute/memory workload) into
# $OUT/ncu_details.txt, and the SASS opcode mix (share of executed instructions and of stall
# samples per opcode, from the source counters) into $OUT/ncu_opmix.txt, and the whole
# per-instruction table into $OUT/<kernel>.sass.csv.gz.
#
# kernels (not part of all): the GPU time of every kernel of bench_gpu's calls at one size (ncu,
# gpu__time_duration only, normal launches), summed per kernel name and divided by the calls, into
# $OUT/kernels_<atoms>.txt (the first size given, by default 1000000; docs/gpu.md v16, v17).
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
    # racecheck is slow (the golden and api cases ran > 100 s without finishing): one small
    # periodic box of the reference model through every kernel of a step (3 calls)
    timeout ${RACE_TIMEOUT:-200} compute-sanitizer --tool racecheck --racecheck-report hazard \
        --error-exitcode 9 "$BIN_BENCH" "$ROOT/tests/golden/typical.safetensors" 1 ${RACE_ATOMS:-216} \
        > "$OUT/racecheck.log" 2>&1
    rc=$?
    summary+=("racecheck (bench_gpu, ${RACE_ATOMS:-216} atoms): rc=$rc ($(( $(date +%s) - start )) s): $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log" | tail -1)")
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
    start=$(date +%s)
    timeout ${BENCH_TIMEOUT:-400} "$BIN_BENCH" "$ROOT/tests/golden/typical.safetensors" "$STEPS" $SIZES \
        > "$OUT/bench.log" 2>&1
    rc=$?
    summary+=("bench: rc=$rc ($(( $(date +%s) - start )) s)")
fi
if [ "$MODE" = profile ]; then
    start=$(date +%s)
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    # normal launches (the CUDA graph default below 20,000 atoms would hide the launch order);
    # one report per kernel, by name (a regex over all k_edge* kernels also catches the graph
    # build's k_edge_rev*): the last layer's forward (6 forward launches per call) and the
    # first merged backward pass (layer 5; the default backward, whose separate receiver and
    # sender passes run only with DS4SCI_CUDA_MERGED=0: PROFILE_KERNELS adds them)
    : > "$OUT/ncu_details.txt"
    : > "$OUT/ncu_opmix.txt"
    rc=0
    for ks in ${PROFILE_KERNELS:-k_edge_fwd:5 k_edge_bwd_merged:0}; do
        k=${ks%%:*}
        DS4SCI_CUDA_GRAPH=0 timeout ${PROFILE_TIMEOUT:-150} "$NCU" --clock-control none \
            -k "regex:^${k}\b" --launch-skip "${ks##*:}" -c 1 \
            --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats \
            --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SpeedOfLight \
            --section SourceCounters -o "$OUT/$k" -f \
            "$BIN_BENCH" "$ROOT/tests/golden/typical.safetensors" 1 10000 >> "$OUT/ncu_run.log" 2>&1
        r=$?
        [ $r -ne 0 ] && rc=$r
        [ -f "$OUT/$k.ncu-rep" ] || continue   # (the receiver/sender passes run only with MERGED=0)
        "$NCU" -i "$OUT/$k.ncu-rep" --page details --print-details all >> "$OUT/ncu_details.txt" 2>&1
        echo "== $k" >> "$OUT/ncu_opmix.txt"
        # the per-instruction table (SASS, executed count, stall samples) for reading offline
        "$NCU" -i "$OUT/$k.ncu-rep" --page source --csv --print-source sass 2>/dev/null |
            gzip -9 > "$OUT/$k.sass.csv.gz"
        gzip -dc "$OUT/$k.sass.csv.gz" |
            python3 -c '
import csv, sys, re, collections
rows = list(csv.reader(sys.stdin))
h = next(i for i, r in enumerate(rows) if "Source" in [c.strip() for c in r])
hdr = rows[h]
src = hdr.index("Source")
ex = next(i for i, c in enumerate(hdr) if c.startswith("Instructions Executed"))
st = next(i for i, c in enumerate(hdr) if c.startswith("Warp Stall Sampling (All"))
num = lambda x: float(x.replace(",", "") or 0)
e = collections.Counter(); s = collections.Counter()
for r in rows[h + 1:]:
    if r and r[0] in ("Kernel Name", "Address"):
        break  # one block: the same kernel may be listed again
    if len(r) <= max(src, ex, st):
        continue
    m = re.match(r"\s*(@!?U?P\w+\s+)?([A-Z0-9_]+)", r[src])
    op = m.group(2) if m else "?"
    e[op] += num(r[ex]); s[op] += num(r[st])
te, ts = sum(e.values()) or 1, sum(s.values()) or 1
print("executed %.4g warp instructions" % te)
for op, v in e.most_common(20):
    print("%-8s %5.1f%% of executed, %5.1f%% of stall samples" % (op, 100 * v / te, 100 * s[op] / ts))
' >> "$OUT/ncu_opmix.txt" 2>&1
        rm -f "$OUT/$k.ncu-rep"
    done
    summary+=("profile: rc=$rc ($(( $(date +%s) - start )) s): $OUT/ncu_details.txt, $OUT/ncu_opmix.txt")
fi
if [ "$MODE" = kernels ]; then
    start=$(date +%s)
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    N=${1:-1000000}
    DS4SCI_CUDA_GRAPH=0 BENCH_PROFILE=0 timeout ${PROFILE_TIMEOUT:-300} "$NCU" --clock-control none \
        --metrics gpu__time_duration.sum --csv --page raw \
        "$BIN_BENCH" "$ROOT/tests/golden/typical.safetensors" 1 "$N" > "$OUT/kernels_$N.csv" 2> "$OUT/kernels_$N.err"
    rc=$?
    python3 - "$OUT/kernels_$N.csv" > "$OUT/kernels_$N.txt" <<'PY'
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
h = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
hdr = rows[h]; kn = hdr.index("Kernel Name"); t = hdr.index("gpu__time_duration.sum")
tot = collections.Counter(); cnt = collections.Counter()
for r in rows[h + 1:]:
    v = r[t].replace(",", "") if len(r) > t else ""
    if not v.replace(".", "").isdigit():
        continue  # the units row
    name = re.sub(r"\(.*", "", r[kn])[:70]
    tot[name] += float(v); cnt[name] += 1
calls = cnt.get("k_forces", 1) or 1  # one k_forces launch per call
all_ = sum(tot.values())
print("calls %d, kernel time per call %.2f ms (ns summed / calls)" % (calls, all_ / calls / 1e6))
for k, v in tot.most_common(45):
    print("%9.3f ms/call %6.2f%% %5d launches  %s" % (v / calls / 1e6, 100 * v / all_, cnt[k], k))
PY
    rm -f "$OUT/kernels_$N.csv"
    summary+=("kernels: rc=$rc ($(( $(date +%s) - start )) s): $OUT/kernels_$N.txt")
    head -25 "$OUT/kernels_$N.txt"
fi
echo "==== tail of test.log"
tail -25 "$OUT/test.log" 2>/dev/null
echo "==== bench.log"
cat "$OUT/bench.log" 2>/dev/null
echo "==== summary"
for s in "${summary[@]}"; do echo "$s"; done
