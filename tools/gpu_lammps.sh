#!/usr/bin/env bash
# tools/gpu_lammps.sh - LAMMPS + pair_style ds4sci on the GPU machine, in one call: device cuda
# against device cpu (tests/lammps/lammps_test.py gpu_* cases), the 1M-atom NVE benchmarks
# (examples/bench_lammps_gpu.in), out-of-memory, and examples/si_nve.in at two timesteps.
# Run from the repository root:
#
#   tools/gpu_lammps.sh [all|test|bench|nve|big|scaling|small]
#
# small (not part of all): LAMMPS at 1,000 atoms on one GPU, the CUDA graph across neighbour-
# list rebuilds (docs/gpu.md v25 items 5 and 8); see the mode's comment below.
# scaling (not part of all): the Si model on 1 GPU against 2 (SCALING_NP) over sizes, the
# weak-scaling partner and -var omp (threaded LAMMPS); see the mode's comment below.
# big (not part of all): the reference-size model through LAMMPS at BIG_CELLS^3 atoms on one GPU
# (default 216: 10,077,696, the most one H200 holds; docs/gpu.md v24: 92 s in all, 33.1 s per
# step), `run 1` of examples/bench_lammps_gpu.in with the core's profile (checkpoint level,
# workspace, peak device memory) and nvidia-smi's memory samples; log lmp_big.log.
#
# The machine has no LAMMPS and no network. Binaries built here (tools/gpu_lammps.sh pack) travel
# in .lammps-gpu/ (listed in .git/info/exclude; carry it and .gpudeps):
#   .lammps-gpu/bin/{lmp,liblammps.so.0,ds4sciplugin.so}   LAMMPS 29 Sep 2021 (PLUGIN, MANYBODY),
#                                                           the plugin with -DDS4SCI_CUDA=ON
#   .lammps-gpu/tree/                                       pruned LAMMPS source (build_lammps.sh
#                                                           prune): rebuilt there if the binaries
#                                                           do not load (then the plugin too)
#   .lammps-gpu/COMMIT                                      the commit the binaries were built at
# Environment: OUT (logs, default ./gpu-out), DEADLINE (seconds after start by which the
# background si_nve runs are stopped, default 280), SI_NVE (1: run them), BENCH_SI / BENCH_REF
# (bench sizes "n steps steps2"; empty: skip), BENCH_NP (MPI ranks of the benchmarks, default 1;
# one GPU per rank when the machine has as many), BENCH_TAG (suffix of the bench log names),
# OOM_CELLS (gpu_oom lattice, default 230: 12.2M atoms, above the 10.08M that one H200 holds
# since docs/gpu.md v23; 0: skip), LAMMPS_GPU_PACK (another pack folder than .lammps-gpu, e.g.
# LAMMPS 4 Feb 2025's: `SUITE=trixie LAMMPS_GPU_PACK=$PWD/.lammps-gpu-trixie tools/gpu_lammps.sh
# pack` with LMPBUILD and PLUGIN built against that tree).
set -u -o pipefail
MODE=${1:-all}
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
PACK=${LAMMPS_GPU_PACK:-$ROOT/.lammps-gpu}
T0=$(date +%s)
DEADLINE=${DEADLINE:-280}
JOBS=${JOBS:-$(nproc)}
since() { echo $(( $(date +%s) - T0 )); }

if [ "$MODE" = pack ]; then
    # On the development machine: binaries and the pruned tree into .lammps-gpu/.
    # PLUGIN (a CUDA build of ds4sciplugin.so), LMPBUILD (the LAMMPS build folder).
    rm -rf "$PACK" && mkdir -p "$PACK/bin"
    cp "${LMPBUILD:?}/lmp" "$LMPBUILD/liblammps.so.0" "${PLUGIN:?}" "$PACK/bin/"
    strip --strip-unneeded "$PACK/bin/liblammps.so.0" "$PACK/bin/ds4sciplugin.so"
    bash "$ROOT/tools/build_lammps.sh" prune "${SUITE:-bookworm}" "$PACK/tree"
    git -C "$ROOT" rev-parse HEAD > "$PACK/COMMIT"
    git -C "$ROOT" status --short -- plugin tests/lammps examples/bench_lammps_gpu.in >> "$PACK/COMMIT"
    du -sh "$PACK"
    exit 0
fi

export LD_LIBRARY_PATH="$PACK/bin:$ROOT/.gpudeps/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PKG_CONFIG_PATH="$ROOT/.gpudeps/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
{
    date -u
    cat "$PACK/COMMIT" 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    mpirun --version | head -1
    nproc
    free -g | head -2
} > "$OUT/env.log" 2>&1

LMP=$PACK/bin/lmp
PLUGIN=$PACK/bin/ds4sciplugin.so
if ldd "$LMP" "$PLUGIN" 2>&1 | grep -q "not found"; then
    echo "carried binaries do not load here: building LAMMPS and the plugin" | tee -a "$OUT/env.log"
    ldd "$LMP" "$PLUGIN" >> "$OUT/env.log" 2>&1
    ( DS4SCI_JOBS=$JOBS bash tools/build_lammps.sh tree "$PACK/tree" "$ROOT/build-l-device" &&
      cmake -S "$ROOT" -B "$ROOT/build-l-device/ds4sci" -DDS4SCI_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
          -DLAMMPS_SOURCE_DIR="$PACK/tree/src" &&
      cmake --build "$ROOT/build-l-device/ds4sci" -j "$JOBS" --target ds4sciplugin ) \
        > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
    LMP=$ROOT/build-l-device/build/lmp
    PLUGIN=$ROOT/build-l-device/ds4sci/plugin/ds4sciplugin.so
    echo "built in $(since) s" >> "$OUT/env.log"
fi
MPI=$(command -v mpirun)
# for NP ranks of LAMMPS: th (OpenMP threads a rank: the cores shared out, at most 16) and the
# launch prefix (mpirun with the environment it must pass on; none for one rank)
ranks() {
    th=$(( $(nproc) / $1 )); [ "$th" -gt 16 ] && th=16; [ "$th" -lt 1 ] && th=1
    launch=()
    [ "$1" -gt 1 ] && launch=("$MPI" -np "$1" --bind-to none -x LD_LIBRARY_PATH -x OMP_NUM_THREADS)
    return 0
}
TEST="python3 tests/lammps/lammps_test.py --lmp $LMP --plugin $PLUGIN --golden tests/golden
      --mpiexec $MPI --si-model potentials/si-sw-et.safetensors"

# ---- si_nve at 1 fs and 0.5 fs (216 atoms), in the background; paused during the benchmarks ----
nve_pids=()
if { [ "$MODE" = all ] || [ "$MODE" = nve ]; } && [ "${SI_NVE:-1}" = 1 ]; then
    for run in "0.001 10000" "0.0005 20000"; do
        set -- $run
        OMP_NUM_THREADS=1 stdbuf -oL "$LMP" -in examples/si_nve.in -var plugin "$PLUGIN" \
            -var device cuda -var n 3 -var dt "$1" -var steps "$2" -log none \
            > "$OUT/si_nve_dt$1.log" 2>&1 &
        nve_pids+=($!)
    done
    echo "si_nve started at $(since) s: ${nve_pids[*]}" >> "$OUT/env.log"
fi
nve_signal() { for p in "${nve_pids[@]}"; do kill "-$1" "$p" 2>/dev/null; done; }

summary=()
if [ "$MODE" = all ] || [ "$MODE" = test ]; then
    start=$(date +%s)
    pids=()
    for g in small typical lower_atomref; do
        $TEST --workdir "$ROOT/build-l-device/t_$g" "gpu_golden:$g" > "$OUT/test_gpu_golden_$g.log" 2>&1 &
        pids+=($!)
    done
    $TEST --workdir "$ROOT/build-l-device/t_hybrid" gpu_hybrid > "$OUT/test_gpu_hybrid.log" 2>&1 &
    hyb=$!
    $TEST --workdir "$ROOT/build-l-device/t_box" --cpu-threads 8 gpu_box > "$OUT/test_gpu_box.log" 2>&1
    summary+=("gpu_box: rc=$? ($(( $(date +%s) - start )) s)")
    i=0
    for g in small typical lower_atomref; do
        wait "${pids[$i]}"
        summary+=("gpu_golden:$g: rc=$?")
        i=$((i + 1))
    done
    wait "$hyb"
    summary+=("gpu_hybrid: rc=$?")
    summary+=("tests done at $(since) s")
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
    nve_signal STOP
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -lms 500 \
        > "$OUT/bench_gpumem.log" 2>&1 &
    smi=$!
    for b in "si ${BENCH_SI-50 30 10}" "ref ${BENCH_REF-100 3 2}"; do
        set -- $b
        [ $# -eq 4 ] || continue
        start=$(date +%s)
        np=${BENCH_NP:-1}
        ranks "$np"
        OMP_NUM_THREADS=$th timeout 200 "${launch[@]}" "$LMP" -in examples/bench_lammps_gpu.in \
            -var plugin "$PLUGIN" -var system "$1" -var n "$2" -var steps "$3" -var steps2 "$4" \
            -var threads "$th" -log "$OUT/bench_$1${BENCH_TAG-}.log" > /dev/null 2>&1
        summary+=("bench $1 n=$2 ranks=$np: rc=$? ($(( $(date +%s) - start )) s)")
    done
    kill "$smi" 2>/dev/null
    if [ "${OOM_CELLS-230}" != 0 ]; then
        start=$(date +%s)
        OMP_NUM_THREADS=16 $TEST --workdir "$ROOT/build-l-device/t_oom" --oom-cells "${OOM_CELLS-230}" \
            gpu_oom > "$OUT/test_gpu_oom.log" 2>&1
        summary+=("gpu_oom: rc=$? ($(( $(date +%s) - start )) s)")
        cp "$ROOT/build-l-device/t_oom/oom.out" "$OUT/" 2>/dev/null
    fi
    nve_signal CONT
fi

if [ "$MODE" = scaling ]; then
    # The Si model on 1 GPU against SCALING_NP ranks with one GPU each (the halo plan), per size
    # n of SCALING_SIZES ("n:steps ..."; 8 n^3 atoms), then the weak-scaling partner (n =
    # SCALING_WEAK: 2,000,376 atoms at 63, ~1M per rank on 2 GPUs) and, where LAMMPS has the
    # OPENMP package, the 1-GPU largest size with -var omp; SCALING_ROUNDS rounds interleaved. One
    # line per run in $OUT/scaling.txt: ms per step (loop time / steps) and LAMMPS's shares.
    # The README's "Several GPUs" table (docs/lammps_gpu.md, 2026-11-30) is this mode's output.
    # SCALING_DEVICE=cpu (with small sizes) checks the script on a machine without a GPU.
    np=${SCALING_NP:-2}
    dev=${SCALING_DEVICE:-cuda}
    ranks "$np"
    share=$th   # threads a rank, 1 or NP ranks alike: one GPU's share of the cores
    sizes=${SCALING_SIZES:-"10:400 20:100 32:40 50:20"}
    last=${sizes##* }; last=${last%%:*}
    omp=0; "$LMP" -h 2>/dev/null | grep -q "nve/omp" && omp=1
    one() {   # one TAG NP N STEPS [lmp arguments]
        local tag=$1 p=$2 n=$3 st=$4
        shift 4
        ranks "$p"
        th=$share
        OMP_NUM_THREADS=$th timeout 300 "${launch[@]}" "$LMP" -in examples/bench_lammps_gpu.in \
            -var plugin "$PLUGIN" -var system si -var device "$dev" -var n "$n" -var steps "$st" \
            -var threads "$th" \
            "$@" -log "$OUT/scaling_$tag.log" > "$OUT/scaling_$tag.out" 2>&1
        local rc=$? loop
        loop=$(awk '/^Loop time of/ {print $4}' "$OUT/scaling_$tag.log" 2>/dev/null)
        printf "%-22s ranks %d atoms %9d rc %d ms/step %s | %s\n" "$tag" "$p" $((8 * n * n * n)) \
            "$rc" "$(awk -v l="${loop:-0}" -v s="$st" 'BEGIN {printf "%.3f", 1000 * l / s}')" \
            "$(grep -E "^(Pair|Comm|Modify|Other) " "$OUT/scaling_$tag.log" 2>/dev/null |
               awk '{printf "%s %s%% ", $1, $NF}')" >> "$OUT/scaling.txt"
        summary+=("scaling $tag: rc=$rc")
    }
    : > "$OUT/scaling.txt"
    for r in $(seq 1 "${SCALING_ROUNDS:-2}"); do
        for ns in $sizes; do
            one "n${ns%%:*}_1gpu_r$r" 1 "${ns%%:*}" "${ns##*:}"
            one "n${ns%%:*}_${np}gpu_r$r" "$np" "${ns%%:*}" "${ns##*:}"
        done
        weak=${SCALING_WEAK-63}
        [ -n "$weak" ] && one "n${weak}_${np}gpu_r$r" "$np" "$weak" 20
        [ "$omp" = 1 ] && one "n${last}_1gpu_omp_r$r" 1 "$last" 20 -var omp "$share"
    done
    sort "$OUT/scaling.txt"
fi

if [ "$MODE" = small ]; then
    # SMALL_CHECKS=1 first: check_cuda_backend's api case with and without
    # DS4SCI_CUDA_GRAPH_UPDATE, golden, vs_cpu, and memcheck of the api case (binaries in
    # .gpufinal, carry it; tools/gpu_lib.sh's ck: $OUT/summary.txt, $OUT/logs.tgz). Then
    # SMALL_ROUNDS (default 3) rounds, interleaved, of examples/bench_lammps_gpu.in with
    # `omp 4 threads 4`:
    #   si_every10_upd / _noupd  shipped Si model, 1,000 atoms, 2,000 steps, list rebuilt every
    #                            10 steps, graph update on (default) / DS4SCI_CUDA_GRAPH_UPDATE=0
    #   si_norebuild             the same without rebuilds (the graph's best case)
    #   ref_auto_upd / _noupd    reference model, 1,000 atoms, 300 steps, LAMMPS's rebuild rule
    #                            (its random weights heat the box: a rebuild every other step)
    # Each line in $OUT/small.txt: loop time, Pair time and share, list builds, the core's
    # cuda_graph counts (DS4SCI_CUDA_PROFILE), then the last thermo line.
    if [ "${SMALL_CHECKS:-0}" = 1 ]; then
        LG=/tmp/gpu_lammps_small_logs
        # shellcheck source=tools/gpu_lib.sh
        . "$ROOT/tools/gpu_lib.sh" # B (.gpufinal), t, ck, the summary $S, logs.tgz on exit
        T=$LG/tests.log
        ck api 200 CK_RUN_CASE=api
        ck api_noupd 200 CK_RUN_CASE=api DS4SCI_CUDA_GRAPH_UPDATE=0
        ck golden 200 CK_RUN_CASE=golden
        ck vs_cpu 200 CK_RUN_CASE=vs_cpu
        grep -E 'Checks|:F:|:E:' "$T"
        # (the api case's intended cudaMalloc failure is an API error to memcheck: not reported)
        (cd tests && CK_RUN_CASE=api timeout 120 compute-sanitizer --tool memcheck \
            --report-api-errors no --error-exitcode 9 "$B/check_cuda_backend") \
            > "$LG/memcheck_api.log" 2>&1
        t memcheck_api $?
        grep 'ERROR SUMMARY' "$LG/memcheck_api.log"
    fi
    small() {   # small TAG "lmp arguments" [VAR=VALUE ...]
        local tag=$1 args=$2
        shift 2
        # shellcheck disable=SC2086 # args: several words
        env "$@" DS4SCI_CUDA_PROFILE="$OUT/small_$tag.prof" timeout 100 "$LMP" \
            -in examples/bench_lammps_gpu.in -var plugin "$PLUGIN" -var omp 4 -var threads 4 \
            $args -log "$OUT/small_$tag.log" > /dev/null 2>&1
        local rc=$?
        echo "$tag rc=$rc $(grep -E '^Loop time' "$OUT/small_$tag.log") |" \
             "$(grep -E '^Pair ' "$OUT/small_$tag.log" | awk '{print "Pair", $3, $NF"%"}') |" \
             "$(grep 'Neighbor list builds' "$OUT/small_$tag.log") |" \
             "$(grep cuda_graph "$OUT/small_$tag.prof" 2>/dev/null)" >> "$OUT/small.txt"
        grep -E '^ +[0-9]+ +[-0-9.e+]+ ' "$OUT/small_$tag.log" | tail -1 >> "$OUT/small.txt"
        summary+=("small $tag: rc=$rc")
    }
    : > "$OUT/small.txt"
    si="-var system si -var n 5 -var steps 2000 -var neigh_check no"
    for r in $(seq 1 "${SMALL_ROUNDS:-3}"); do
        small "si_every10_upd_$r" "$si -var neigh_every 10"
        small "si_every10_noupd_$r" "$si -var neigh_every 10" DS4SCI_CUDA_GRAPH_UPDATE=0
        small "si_norebuild_$r" "$si -var neigh_every 1000000"
        small "ref_auto_upd_$r" "-var system ref -var n 10 -var steps 300"
        small "ref_auto_noupd_$r" "-var system ref -var n 10 -var steps 300" \
            DS4SCI_CUDA_GRAPH_UPDATE=0
    done
    cat "$OUT/small.txt"
fi

if [ "$MODE" = big ]; then
    start=$(date +%s)
    n=${BIG_CELLS:-216}
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv -l 2 > "$OUT/big_gpumem.log" 2>&1 &
    smi=$!
    DS4SCI_CUDA_PROFILE=$OUT/big_profile.txt OMP_NUM_THREADS=$JOBS timeout "${BIG_TIMEOUT:-500}" \
        "$LMP" -in examples/bench_lammps_gpu.in -var plugin "$PLUGIN" -var system ref -var n "$n" \
        -var steps 1 -var omp "$JOBS" -var threads "$JOBS" -log "$OUT/lmp_big.log" \
        > "$OUT/lmp_big.out" 2>&1
    summary+=("big n=$n ($((n * n * n)) atoms): rc=$? ($(( $(date +%s) - start )) s)")
    kill "$smi" 2>/dev/null
    grep -E "^ +[01] |^Loop|^Pair|ERROR" "$OUT/lmp_big.log"
    grep -E "checkpoint|peak_device|workspace" "$OUT/big_profile.txt" 2>/dev/null
fi

if [ "${#nve_pids[@]}" -gt 0 ]; then
    for p in "${nve_pids[@]}"; do
        while kill -0 "$p" 2>/dev/null && [ "$(since)" -lt "$DEADLINE" ]; do sleep 2; done
    done
    nve_signal TERM
    summary+=("si_nve stopped/finished at $(since) s")
fi

echo "==== tests"
tail -n 4 "$OUT"/test_gpu_*.log
echo "==== bench"
for f in "$OUT"/bench_si*.log "$OUT"/bench_ref*.log; do
    [ -f "$f" ] && grep -E "^ +[0-9]+ |^Loop|^Pair|^Neigh|^Comm|^Modify|^Other|ERROR" "$f"
done
echo "==== si_nve"
for f in "$OUT"/si_nve_*.log; do [ -f "$f" ] && tail -n 3 "$f"; done
echo "==== summary"
# exit status: 1 when a test or benchmark above failed (the summary's rc=N, N != 0), so that a
# caller (tools/gpu_verify.sh) sees it; it reported 0 for failed cases before 2026-11-30
status=0
for s in "${summary[@]}"; do
    echo "$s"
    case "$s" in *"rc=0"*) ;; *"rc="*) status=1 ;; esac
done
echo "total $(since) s"
exit "$status"
