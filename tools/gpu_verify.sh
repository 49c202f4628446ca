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
#                                    check_cuda_backend (golden, api, vs_cpu with their measured
#                                    errors; vs_cpu also with DS4SCI_CUDA_CHECKPOINT=1 and 2 and
#                                    DS4SCI_CUDA_KEEP=0; golden with
#                                    DS4SCI_CUDA_EDGE=unfused; golden and vs_cpu with
#                                    DS4SCI_CUDA_FASTEXP=0 and with DS4SCI_CUDA_SPLIT=1 and 2),
#                                    memcheck (golden; api), bench_gpu 1k..1M (and 10k, 1M with
#                                    FASTEXP=0; 1k, 10k with each SPLIT), bench_filter_mma, LAMMPS
#                                    gpu tests and the 1M-atom LAMMPS benchmarks (also on 2 ranks
#                                    with one GPU each when there are two GPUs), racecheck.
#   With two or more GPUs, racecheck (check_cuda_backend case RACE_CASE, default golden) and BG_CMD (a command, e.g. a long NVE run) run on the last
#   GPU from the start while the rest runs on GPU 0 (the 2-rank LAMMPS runs use both, at the
#   end, after the background jobs are stopped).
#
# One GPU: BG_CMD runs beside everything from the start (switch the benchmarks off then);
# RACE=0 skips racecheck (the final one and, with two GPUs, the one beside BG_CMD).
# VARIANTS=0 runs only the default paths' checks; FILTER=0 skips bench_filter_mma; EXPF_BENCH,
# GRAPH_BENCH, MERGED_BENCH, XCH_F32_BENCH, GEMM_BENCH, WEAK_BENCH=0 skip those runs (WEAK_BENCH: 2M Si atoms on
# two GPUs, the weak-scaling partner of the one-rank 1M bench); WIRE_TEST=0 the LAMMPS tests with
# the wire plan on host buffers (DS4SCI_IPC=0 DS4SCI_CUDA_WIRE=1; the default on one node is
# CUDA IPC) and the weak bench with the callbacks (two GPUs); IPC_FAULT_TEST=0 the IPC fallback
# check (two GPUs); TF32_TEST=0 the TF32 node GEMMs' error report and bench; RESIDENT_TEST=0 the
# LAMMPS checks of the resident candidate list and device checks (thermo with and without
# them, the 1M bench without them); SPLITS="" the split ones; LAMMPS_TEST=0 the LAMMPS tests
# (run them in a call of their own with tools/gpu_lammps.sh test when the rest fills one).
# Environment for run: OUT (files back: summary.txt and logs.tgz), BUDGET (seconds, default
# 420), SIZES (bench_gpu sizes, default "1000 10000 100000 1000000"), BG_CMD, BG_SECONDS
# (when BG_CMD is stopped, default BUDGET - 150).
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
    rm -f "$ROOT/.gpufinal/bench_filter_mma" "$ROOT/.gpufinal/bench_gemm"
    for b in bench_filter_mma bench_gemm; do
        if nice make -C "$W/build" -j "${JOBS:-2}" $b > /dev/null 2>&1; then
            cp "$W/build/examples/$b" "$ROOT/.gpufinal/"
        fi
    done
    cp "$W/build/plugin/ds4sciplugin.so" "$LMPBUILD/lmp" "$LMPBUILD/liblammps.so.0" "$ROOT/.lammps-gpu/bin/"
    strip --strip-unneeded "$ROOT"/.gpufinal/check_cuda_backend "$ROOT"/.gpufinal/bench_gpu \
        "$ROOT"/.lammps-gpu/bin/ds4sciplugin.so "$ROOT"/.lammps-gpu/bin/liblammps.so.0
    { git -C "$W" rev-parse HEAD; echo "$W"; } > "$ROOT/.gpufinal/COMMIT"
    # the shared libraries of Debian's check and cJSON that the binaries load (the GPU machine
    # has neither): next to the static ones in .gpudeps/lib (docs/gpu.md "Running it")
    mkdir -p "$ROOT/.gpudeps/lib"
    for lib in libsubunit.so.0 libcjson.so.1; do
        p=$(ldd "$ROOT/.gpufinal/check_cuda_backend" "$ROOT/.gpufinal/bench_gpu" 2>/dev/null |
            awk -v l="$lib" '$1 == l && $3 ~ /^\// {print $3; exit}')
        [ -n "$p" ] && cp -L "$p" "$ROOT/.gpudeps/lib/$lib"
    done
    grep -qx "/.gpudeps/" "$ROOT/.git/info/exclude" || echo "/.gpudeps/" >> "$ROOT/.git/info/exclude"
    for d in .gpufinal .lammps-gpu; do
        grep -qx "/$d/" "$ROOT/.git/info/exclude" || echo "/$d/" >> "$ROOT/.git/info/exclude"
    done
    du -sh "$ROOT/.gpufinal" "$ROOT/.lammps-gpu/bin"
    exit 0
fi

# ---- run, on the GPU machine ----
OUT=${OUT:-$ROOT/gpu-out}
BUDGET=${BUDGET:-420}
SIZES=${SIZES:-"1000 10000 100000 1000000"}
LG=/tmp/gpu_verify_logs
# shellcheck source=tools/gpu_lib.sh
. "$ROOT/tools/gpu_lib.sh"
{ date -u; cat "$B/COMMIT"; nvidia-smi --query-gpu=index,name,driver_version,clocks.sm --format=csv; } >> "$S" 2>&1
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
bg=()
if [ "$NGPU" -ge 2 ]; then
    last=$((NGPU - 1))
    rc_case=${RACE_CASE:-golden}
    if [ "${RACE:-1}" = 1 ]; then   # RACE=0: not beside a BG_CMD that should run alone
        (cd tests && CUDA_VISIBLE_DEVICES=$last CK_RUN_CASE=$rc_case \
            timeout "${BG_SECONDS:-$((BUDGET - 150))}" \
            compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 9 \
            "$B/check_cuda_backend"; echo "racecheck $rc_case rc=$? t=$(( $(date +%s) - T0 ))s") \
            > "$LG/racecheck_$rc_case.log" 2>&1 &
        bg+=($!)
    fi
    if [ -n "${BG_CMD:-}" ]; then
        (CUDA_VISIBLE_DEVICES=$last timeout "${BG_SECONDS:-$((BUDGET - 150))}" bash -c "$BG_CMD";
         echo "BG_CMD rc=$? t=$(( $(date +%s) - T0 ))s") > "$LG/bg.log" 2>&1 &
        bg+=($!)
    fi
    export CUDA_VISIBLE_DEVICES=0
    echo "$NGPU GPUs: racecheck (api) and BG_CMD on GPU $last, the rest on GPU 0" >> "$S"
elif [ -n "${BG_CMD:-}" ]; then
    # one GPU: BG_CMD shares it with everything below (set the bench knobs off: timings taken
    # beside it mean nothing)
    (timeout "${BG_SECONDS:-$((BUDGET - 150))}" bash -c "$BG_CMD";
     echo "BG_CMD rc=$? t=$(( $(date +%s) - T0 ))s") > "$LG/bg.log" 2>&1 &
    bg+=($!)
    echo "1 GPU: BG_CMD shares it" >> "$S"
fi

T=$LG/tests.log
: > "$T"
ck golden 60 CK_RUN_CASE=golden
ck api 60 CK_RUN_CASE=api
ck vs_cpu 150 CK_RUN_CASE=vs_cpu
# the built-in exchange's periodic images as ghost rows (the default folds them into their
# owned atoms past the graph build): the path of callers with ghost rows, and its own check
ck golden_rows 60 CK_RUN_CASE=golden DS4SCI_CUDA_IMAGES=rows
ck vs_cpu_rows 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_IMAGES=rows
# the row split (edge_split.cu) takes the small cases of the suite (below 4 rows per warp slot;
# the 10k-atom reference model runs S = 1 and the merged backward); S = 1 forced runs the merged
# backward on all of them
ck vs_cpu_split1 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_SPLIT=1
ck golden_split1 60 CK_RUN_CASE=golden DS4SCI_CUDA_SPLIT=1
# the forward's filters on the float64 tensor cores (edge_fwd_tc.cu: F = 128, K <= 32, S = 1) are
# the default since docs/gpu.md v27, so the split1 runs above take them for the F = 128 models;
# the FFMA forward (k_edge_fwd) at S = 1 for those models with DS4SCI_CUDA_TC=0
ck golden_ffma_split1 60 CK_RUN_CASE=golden DS4SCI_CUDA_SPLIT=1 DS4SCI_CUDA_TC=0
ck vs_cpu_ffma_split1 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_SPLIT=1 DS4SCI_CUDA_TC=0
# every option combination at F = 128 with S = 1 (the case sets it): the TC forward's shapes,
# and the FFMA forward's at 4 channels per lane
ck f128 300 CK_RUN_CASE=f128
ck f128_ffma 300 CK_RUN_CASE=f128 DS4SCI_CUDA_TC=0
# node work in chunks of owned rows (default 262144: one chunk below that): small chunks so every
# case runs several, with a partial last one (and the ghost rows with it)
ck golden_chunk7 60 CK_RUN_CASE=golden DS4SCI_CUDA_NODE_CHUNK=7
ck api_chunk5 60 CK_RUN_CASE=api DS4SCI_CUDA_NODE_CHUNK=5
ck vs_cpu_chunk96 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_NODE_CHUNK=96
# checkpointed layer inputs (auto: only for large systems, so the suite's sizes keep all):
# forced on, so the recomputation path runs on every case
ck golden_ckpt 60 CK_RUN_CASE=golden DS4SCI_CUDA_CHECKPOINT=1
ck vs_cpu_ckpt 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_CHECKPOINT=1
# deep checkpointing (level 2: only x_0 kept, O(L^2) layer passes; auto only where level 1 would
# not fit): forced, so its re-runs and the rotation of vec slots and dE/dvec run on every case
ck golden_ckpt2 60 CK_RUN_CASE=golden DS4SCI_CUDA_CHECKPOINT=2
ck vs_cpu_ckpt2 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_CHECKPOINT=2
ck vs_cpu_ckpt2_split1 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_CHECKPOINT=2 DS4SCI_CUDA_SPLIT=1
# node work kept from the forward (auto: level 2 for the suite's sizes): the backward's own
# LayerNorm, q/k/v, vec_proj and o_proj again (0), q/k/v kept only (1)
ck golden_keep0 60 CK_RUN_CASE=golden DS4SCI_CUDA_KEEP=0
ck vs_cpu_keep0 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_KEEP=0
ck golden_keep1 60 CK_RUN_CASE=golden DS4SCI_CUDA_KEEP=1 DS4SCI_CUDA_NODE_CHUNK=7
ck api_keep1 60 CK_RUN_CASE=api DS4SCI_CUDA_KEEP=1
# the candidate list kept on the GPU for every caller (default: from a caller's first promise
# on; test_resident_neighbors_match compares forced, auto and uploaded lists either way) and the
# candidates' checks on the host (default: in the graph kernels): every api / golden case
ck api_resident 60 CK_RUN_CASE=api DS4SCI_CUDA_RESIDENT_NBR=1
ck golden_hostchecks 60 CK_RUN_CASE=golden DS4SCI_CUDA_DEVICE_CHECKS=0
ck api_hostchecks 60 CK_RUN_CASE=api DS4SCI_CUDA_DEVICE_CHECKS=0
# the node GEMMs by gemm_x3.cu (auto: GEMMs of 16,384 rows and more, so in the suite only the
# 10k-atom reference model's vec_proj): forced at every size, and cuBLAS's SGEMM everywhere
ck golden_x3 60 CK_RUN_CASE=golden DS4SCI_CUDA_GEMM=x3
ck vs_cpu_x3 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_GEMM=x3
ck f128_x3 300 CK_RUN_CASE=f128 DS4SCI_CUDA_GEMM=x3
ck api_x3 60 CK_RUN_CASE=api DS4SCI_CUDA_GEMM=x3
ck vs_cpu_sgemm 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_GEMM=sgemm
# gemm_x3's mma.sync kernel (the wgmma one is the default on sm_90 devices; v39)
ck golden_x3mma 60 CK_RUN_CASE=golden DS4SCI_CUDA_GEMM=x3 DS4SCI_CUDA_X3=mma
ck vs_cpu_x3mma 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_GEMM=x3 DS4SCI_CUDA_X3=mma
# the neighbour embedding's per-edge filter kernels (k_ne_fwd, k_ne_bwd) instead of the
# default by species (ne_species.cu: every model of the suite with it has <= 16 species)
ck golden_nesp0 60 CK_RUN_CASE=golden DS4SCI_CUDA_NE_SPECIES=0
ck vs_cpu_nesp0 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_NE_SPECIES=0
if [ "${VARIANTS:-1}" = 1 ]; then   # VARIANTS=0: the defaults only
    if [ "${FULL:-1}" = 1 ]; then   # variants unchanged since the last run can be left out (FULL=0)
        ck golden_unfused 60 CK_RUN_CASE=golden DS4SCI_CUDA_EDGE=unfused
    fi
    ck api_xch_f64 60 CK_RUN_CASE=api DS4SCI_CUDA_XCH_F32=0
    # CUDA graph of a step (the default below 20,000 owned atoms, so the default runs above use
    # it on every small system; =1 forces it at every size, =0 turns it off): each check calls
    # compute twice or more on one context, the second call captures and replays
    ck golden_nograph 60 CK_RUN_CASE=golden DS4SCI_CUDA_GRAPH=0
    ck api_nograph 60 CK_RUN_CASE=api DS4SCI_CUDA_GRAPH=0
    ck golden_graph 60 CK_RUN_CASE=golden DS4SCI_CUDA_GRAPH=1
    ck api_graph 60 CK_RUN_CASE=api DS4SCI_CUDA_GRAPH=1
    ck vs_cpu_graph 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_GRAPH=1
    # separate receiver and sender passes (before the merged backward)
    ck golden_unmerged 60 CK_RUN_CASE=golden DS4SCI_CUDA_MERGED=0 DS4SCI_CUDA_SPLIT=1
    ck api_unmerged 60 CK_RUN_CASE=api DS4SCI_CUDA_MERGED=0 DS4SCI_CUDA_SPLIT=1
    ck golden_expf 60 CK_RUN_CASE=golden DS4SCI_CUDA_FASTEXP=0
    # the merged backward's filter backward once per edge instead of once per pair (PAIR=0)
    ck golden_pair0 60 CK_RUN_CASE=golden DS4SCI_CUDA_SPLIT=1 DS4SCI_CUDA_PAIR=0
    ck vs_cpu_pair0 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_SPLIT=1 DS4SCI_CUDA_PAIR=0
    [ "${FULL:-1}" = 1 ] && ck vs_cpu_expf 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_FASTEXP=0
    ck golden_split2 60 CK_RUN_CASE=golden DS4SCI_CUDA_SPLIT=2
    ck vs_cpu_split2 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_SPLIT=2
    # the receivers' Morton row order (the default from 16,384 owned rows outside graph mode:
    # none of the suite's systems; =1 forces it) and the dynamic items of v29 (DYN=1: counters
    # for the split passes only) and before (=0)
    ck golden_order 60 CK_RUN_CASE=golden DS4SCI_CUDA_ORDER=1 DS4SCI_CUDA_GRAPH=0
    ck vs_cpu_order 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_ORDER=1
    ck vs_cpu_order_split1 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_ORDER=1 DS4SCI_CUDA_SPLIT=1
    ck golden_dyn1 60 CK_RUN_CASE=golden DS4SCI_CUDA_DYN=1 DS4SCI_CUDA_SPLIT=1
    ck golden_dyn0 60 CK_RUN_CASE=golden DS4SCI_CUDA_DYN=0
    # the filters over all K (KWIN=0: the same bits where the window applies, the api case's
    # test_basis_window_same_bits and test_tc_window_and_r_sort) and the rows unsorted by r
    ck golden_kwin0 60 CK_RUN_CASE=golden DS4SCI_CUDA_KWIN=0
    ck vs_cpu_rsort0 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_RSORT=0
fi
(cd tests && CK_RUN_CASE=golden timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$B/check_cuda_backend") > "$LG/memcheck.log" 2>&1
t memcheck $?
(cd tests && CK_RUN_CASE=golden DS4SCI_CUDA_SPLIT=1 DS4SCI_CUDA_ORDER=1 timeout 90 \
    compute-sanitizer --tool memcheck --error-exitcode 9 "$B/check_cuda_backend") \
    > "$LG/memcheck_merged.log" 2>&1
t memcheck_merged_order $?
(cd tests && CK_RUN_CASE=golden DS4SCI_CUDA_GEMM=x3 timeout 90 compute-sanitizer --tool memcheck \
    --error-exitcode 9 "$B/check_cuda_backend") > "$LG/memcheck_x3.log" 2>&1
t memcheck_x3 $?
# the api cases (caller exchange, partial owners, send rows): the out-of-memory case's intended
# cudaMalloc failure is an API error to memcheck, so API errors are not reported here
(cd tests && CK_RUN_CASE=api timeout 120 compute-sanitizer --tool memcheck --report-api-errors no \
    --error-exitcode 9 "$B/check_cuda_backend") > "$LG/memcheck_api.log" 2>&1
t memcheck_api $?
# shellcheck disable=SC2086
timeout 150 "$B/bench_gpu" tests/golden/typical.safetensors 3 $SIZES > "$LG/bench_gpu.log" 2>&1
t bench_gpu $?
if [ "${RACE:-1}" = 1 ] && [ -x "$B/bench_gemm" ]; then   # gemm_x3's kernels, every shape
    timeout 120 compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 9 \
        "$B/bench_gemm" 1 1000 3000 > "$LG/racecheck_gemm.log" 2>&1
    t racecheck_gemm $?
fi
if [ "${GEMM_BENCH:-1}" = 1 ] && [ -x "$B/bench_gemm" ]; then   # gemm_x3 against SGEMM
    timeout 120 "$B/bench_gemm" 5 1000 10648 97336 1000000 > "$LG/bench_gemm.log" 2>&1
    t bench_gemm $?
fi
if [ "${MERGED_BENCH:-1}" = 1 ]; then   # separate receiver/sender passes side by side
    DS4SCI_CUDA_MERGED=0 timeout 90 "$B/bench_gpu" tests/golden/typical.safetensors 3 10000 100000 \
        1000000 > "$LG/bench_gpu_unmerged.log" 2>&1
    t bench_gpu_unmerged $?
fi
if [ "${EXPF_BENCH:-1}" = 1 ]; then   # SiLU with expf (DS4SCI_CUDA_FASTEXP=0) side by side
    DS4SCI_CUDA_FASTEXP=0 timeout 60 "$B/bench_gpu" tests/golden/typical.safetensors 3 10000 1000000 \
        > "$LG/bench_gpu_expf.log" 2>&1
    t bench_gpu_expf $?
fi
if [ "${GRAPH_BENCH:-1}" = 1 ]; then   # CUDA graph off / forced on, side by side, no profile events
    for g in 0 1; do
        BENCH_PROFILE=0 DS4SCI_CUDA_GRAPH=$g timeout 60 "$B/bench_gpu" tests/golden/typical.safetensors \
            7 1000 10000 27000 > "$LG/bench_gpu_graph$g.log" 2>&1
        t "bench_gpu_graph$g" $?
    done
fi
# (the loop variable is not S: that is the summary file of gpu_lib.sh)
for sf in ${SPLITS-1 2 4 8}; do   # forced split factors at the sizes where the rule matters
    DS4SCI_CUDA_SPLIT=$sf timeout 60 "$B/bench_gpu" tests/golden/typical.safetensors 5 1000 10000 \
        > "$LG/bench_gpu_split$sf.log" 2>&1
    t "bench_gpu_split$sf" $?
done
if [ "${TF32_TEST:-1}" = 1 ]; then
    # the node GEMMs on TF32 tensor cores (DS4SCI_CUDA_TF32=1, opt-in): its errors against the
    # float64 CPU path (CK_REPORT lines; the fp32 tolerances may fail: a report, not a gate) and
    # its speed beside the default
    ck vs_cpu_tf32_report 150 CK_RUN_CASE=vs_cpu DS4SCI_CUDA_TF32=1
    for tf in 0 1; do
        DS4SCI_CUDA_TF32=$tf BENCH_PROFILE=0 timeout 60 "$B/bench_gpu" tests/golden/typical.safetensors \
            3 10000 1000000 > "$LG/bench_gpu_tf32_$tf.log" 2>&1
        t "bench_gpu_tf32_$tf" $?
    done
fi
if [ "${FILTER:-1}" = 1 ] && [ -x "$B/bench_filter_mma" ]; then
    timeout 90 "$B/bench_filter_mma" --model potentials/si-sw-et.safetensors --layer 1 --rmin 2.0 \
        > "$LG/filter_mma.log" 2>&1
    rc=$?
    t bench_filter_mma $rc
    if [ "$rc" != 0 ]; then   # where it failed, on a small run
        timeout 60 compute-sanitizer --tool memcheck --print-limit 5 "$B/bench_filter_mma" \
            --edges 65536 --reps 1 > "$LG/filter_mma_memcheck.log" 2>&1
        t bench_filter_mma_memcheck $?
    fi
fi
L=$LG/lammps
unset CUDA_VISIBLE_DEVICES   # the 2-rank LAMMPS tests use one GPU per rank when there are two
if [ "${LAMMPS_TEST:-1}" = 1 ]; then   # LAMMPS_TEST=0: in a call of their own (the 600 s limit)
    OUT=$L SI_NVE=0 BENCH_SI="" BENCH_REF="" OOM_CELLS=0 timeout 260 bash tools/gpu_lammps.sh \
        test > "$LG/lammps.log" 2>&1
    t lammps_test $?
fi
# The checks below run only with enough of BUDGET left (a device call ends at its own limit,
# and then nothing comes back; the wire test repeats the LAMMPS tests, ~150 s); a check left
# out says so in the summary.
budget_ok() { left "$2" && return 0; t "$1 skipped (BUDGET)" 0; return 1; }
if [ "$NGPU" -ge 2 ] && [ "${WIRE_TEST:-1}" = 1 ] &&
    budget_ok lammps_test_wire_host $(( BUDGET - 200 )); then
    # the default 2-rank runs above exchange by CUDA IPC (the wire plan with device buffers);
    # the LAMMPS GPU tests again with the plan on pinned host buffers (DS4SCI_IPC=0
    # DS4SCI_CUDA_WIRE=1), the path between nodes
    mkdir -p "$L/wire"
    DS4SCI_IPC=0 DS4SCI_CUDA_WIRE=1 OUT=$L/wire SI_NVE=0 BENCH_SI="" BENCH_REF="" OOM_CELLS=0 \
        timeout 260 bash tools/gpu_lammps.sh test > "$LG/lammps_wire.log" 2>&1
    t lammps_test_wire_host $?
fi
# A short run of examples/bench_lammps_gpu.in (Si, 4,096 atoms, 4 threads a rank):
#   lmp_si NP LOG [VAR=VALUE ...] [-- more lmp arguments]
lmp_si() {
    local np=$1 log=$2 envs=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    env "${envs[@]}" OMP_NUM_THREADS=4 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        LD_LIBRARY_PATH="$ROOT/.lammps-gpu/bin:$LD_LIBRARY_PATH" timeout 60 \
        mpirun -np "$np" --bind-to none -x LD_LIBRARY_PATH -x OMP_NUM_THREADS \
        "$ROOT/.lammps-gpu/bin/lmp" -in examples/bench_lammps_gpu.in \
        -var plugin "$ROOT/.lammps-gpu/bin/ds4sciplugin.so" -var system si -var n 8 \
        -var steps2 0 -var threads 4 "$@" -log "$log" > /dev/null 2>&1
}
if [ "$NGPU" -ge 2 ] && [ "${IPC_FAULT_TEST:-1}" = 1 ] &&
    budget_ok ipc_fault $(( BUDGET - 60 )); then
    # where CUDA IPC fails (DS4SCI_IPC_FAULT=1: rank 1's opens fail, as with GPUs hidden from
    # each other) the plugin warns and moves the rows through host memory: 4,096 Si atoms on 2
    # ranks, 10 steps, must print the same thermo as through IPC. DS4SCI_CUDA_WIRE=1 in both:
    # after the failure the plan on host buffers adds the rows in IPC's order (the callbacks
    # would add them in another, other last bits)
    for f in ipc fault; do
        fault=""; [ "$f" = fault ] && fault=1
        lmp_si 2 "$LG/ipc_$f.log" DS4SCI_IPC_FAULT="$fault" DS4SCI_CUDA_WIRE=1 -- -var steps 10
        t "lammps_ipc_$f" $?
    done
    a=$(grep -E "^ +10 " "$LG/ipc_ipc.log" | awk '{print $2, $3, $4, $5}')
    b=$(grep -E "^ +10 " "$LG/ipc_fault.log" | awk '{print $2, $3, $4, $5}')
    [ -n "$a" ] && [ "$a" = "$b" ] && grep -q "feature rows go through host memory" "$LG/ipc_fault.log"
    t "ipc_fault_same_thermo ($a | $b)" $?
fi
if [ "${RESIDENT_TEST:-1}" = 1 ] && budget_ok lammps_resident $(( BUDGET - 90 )); then
    # the plugin promises the last list between LAMMPS's builds; by default the core then
    # keeps it on the GPU and checks it there: the same thermo as without both
    # (DS4SCI_CUDA_RESIDENT_NBR=0 DS4SCI_CUDA_DEVICE_CHECKS=0), 1 rank and (with two GPUs) 2
    # ranks, 4,096 Si atoms, 20 steps, a forced rebuild every 5
    nps="1"; [ "$NGPU" -ge 2 ] && nps="1 2"
    for np in $nps; do
        for v in 0 1; do
            lmp_si "$np" "$LG/resident_${v}_$np.log" DS4SCI_CUDA_RESIDENT_NBR=$v \
                DS4SCI_CUDA_DEVICE_CHECKS=$v -- -var steps 20 -var neigh_every 5 -var neigh_check no
            t "lammps_resident_${v}_np$np" $?
        done
        a=$(grep -E "^ +20 " "$LG/resident_0_$np.log" | awk '{print $2, $3, $4, $5}')
        b=$(grep -E "^ +20 " "$LG/resident_1_$np.log" | awk '{print $2, $3, $4, $5}')
        [ -n "$a" ] && [ "$a" = "$b" ]
        t "resident_same_thermo_np$np ($a | $b)" $?
    done
fi
# the 2-rank benchmarks need GPU 1: stop the background jobs first (they run to BG_SECONDS)
for p in "${bg[@]}"; do
    while kill -0 "$p" 2>/dev/null && left "${BG_SECONDS:-$((BUDGET - 150))}"; do sleep 2; done
    pkill -TERM -P "$p" 2>/dev/null; kill "$p" 2>/dev/null
done
# One Si benchmark of tools/gpu_lammps.sh (its log bench_si<TAG>.log, the core's profile
# profile<TAG>.txt under $L), the reference model left out:
#   si_bench NP TAG "n steps steps2" TIMEOUT [VAR=VALUE ...]
si_bench() {
    local np=$1 tag=$2 si=$3 to=$4
    shift 4
    env "$@" OUT="$L" SI_NVE=0 OOM_CELLS=0 BENCH_NP="$np" BENCH_TAG="$tag" BENCH_SI="$si" \
        BENCH_REF="" DS4SCI_CUDA_PROFILE="$L/profile$tag.txt" timeout "$to" \
        bash tools/gpu_lammps.sh bench >> "$LG/lammps.log" 2>&1
}
if [ "$NGPU" -ge 2 ] && left $(( BUDGET - 110 )); then
    si_bench 2 _2gpu "50 20 10" 70
    t lammps_bench_2gpu $?
    if [ "${XCH_F32_BENCH:-1}" = 1 ] && left $(( BUDGET - 80 )); then
        # forward rows as doubles (before the packed floats): the same bits travel, so the
        # thermo output must be identical to the run above
        si_bench 2 _2gpu_xchf64 "50 20 0" 45 DS4SCI_CUDA_XCH_F32=0
        t lammps_bench_2gpu_xchf64 $?
    fi
    if [ "${WEAK_BENCH:-1}" = 1 ] && left $(( BUDGET - 70 )); then
        # weak scaling: 2,000,376 Si atoms (n = 63) on 2 GPUs, ~1M per rank, against one GPU's
        # 1,000,000 (n = 50, the one-rank bench below)
        si_bench 2 _2gpu_weak "63 20 0" 90
        t lammps_bench_2gpu_weak $?
        if [ "${WIRE_TEST:-1}" = 1 ] && left $(( BUDGET - 60 )); then
            # the callbacks through host memory (DS4SCI_CUDA_WIRE=0) side by side
            si_bench 2 _2gpu_weak_cb "63 20 0" 90 DS4SCI_CUDA_WIRE=0
            t lammps_bench_2gpu_weak_cb $?
        fi
    fi
fi
[ "$NGPU" -ge 2 ] && export CUDA_VISIBLE_DEVICES=0
if left $(( BUDGET - ${LMP_BENCH_NEED:-50} )); then   # one rank, one GPU, device exchange
    OUT=$L SI_NVE=0 OOM_CELLS=0 BENCH_SI="${BENCH_SI-50 20 10}" BENCH_REF="${BENCH_REF-100 3 2}" \
        DS4SCI_CUDA_PROFILE=$L/profile_1rank.txt timeout $(( BUDGET - ($(date +%s) - T0) - 5 )) \
        bash tools/gpu_lammps.sh bench >> "$LG/lammps.log" 2>&1
    t lammps_bench $?
    if [ "${RESIDENT_TEST:-1}" = 1 ] && left $(( BUDGET - 40 )); then
        # the same 1M-atom Si run with the candidate list uploaded and checked on the host
        # at every step (before v19's defaults) side by side
        si_bench 1 _1rank_upload "50 20 0" 60 DS4SCI_CUDA_RESIDENT_NBR=0 \
            DS4SCI_CUDA_DEVICE_CHECKS=0
        t lammps_bench_upload $?
    fi
fi
if [ "$NGPU" -lt 2 ] && [ "${RACE:-1}" = 1 ]; then
    rest=$(( BUDGET - ($(date +%s) - T0) - 10 ))
    if [ "$rest" -gt 30 ]; then
        # the order forced (it is off in graph mode): its reads beside the dynamic items
        DS4SCI_CUDA_ORDER=1 timeout "$rest" compute-sanitizer --tool racecheck \
            --racecheck-report hazard --error-exitcode 9 \
            "$B/bench_gpu" tests/golden/typical.safetensors 1 216 > "$LG/racecheck.log" 2>&1
        t "racecheck (${rest}s allowed)" $?
    fi
fi
echo "==== summary"; cat "$S"
grep -hE "^====|^[0-9]+%|:F:|:E:" "$T"
grep -h "ERROR SUMMARY" "$LG/memcheck.log" "$LG/memcheck_merged.log" "$LG/memcheck_api.log"
grep -vE "^#" "$LG/bench_gpu.log" | head -40
grep -vE "^#" "$LG/bench_gpu_expf.log" 2>/dev/null | head -12
for sf in ${SPLITS-1 2 4 8}; do echo "split $sf"; grep -E "^ +[0-9]+ " "$LG/bench_gpu_split$sf.log"; done
echo "unmerged"; grep -E "^ +[0-9]+ |per-stage" "$LG/bench_gpu_unmerged.log" 2>/dev/null
for g in 0 1; do echo "graph $g"; grep -E "^ +[0-9]+ " "$LG/bench_gpu_graph$g.log" 2>/dev/null; done
for tf in 0 1; do echo "tf32 $tf"; grep -E "^ +[0-9]+ " "$LG/bench_gpu_tf32_$tf.log" 2>/dev/null; done
grep -E "^variant|PASS|FAIL|ALL|SOME" "$LG/filter_mma.log" 2>/dev/null | grep -v "^sim" | head -40
cat "$L"/profile_*.txt 2>/dev/null
tail -n 5 "$LG"/racecheck*.log 2>/dev/null
tail -n 30 "$LG/lammps.log"
