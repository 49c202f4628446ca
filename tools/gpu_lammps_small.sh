#!/usr/bin/env bash
# tools/gpu_lammps_small.sh - LAMMPS + pair_style ds4sci at 1,000 atoms on one GPU: the CUDA
# graph's behaviour across neighbour-list rebuilds (docs/gpu.md v25 items 5 and 8 were measured
# with these runs, from the session's call scripts). Run from the repository root on the GPU
# machine, carrying .lammps-gpu/bin (tools/gpu_lammps.sh pack, or tools/gpu_verify.sh pack),
# .gpudeps and, for the checks, .gpufinal:
#
#   OUT=$OUT tools/gpu_lammps_small.sh [checks] [ROUNDS]
#
# checks: first check_cuda_backend's api case with and without DS4SCI_CUDA_GRAPH_UPDATE, golden,
# vs_cpu, and memcheck of the api case (binaries in .gpufinal; tools/gpu_lib.sh's ck: summary in
# $OUT/summary.txt, logs in $OUT/logs.tgz). Then ROUNDS (default 3) rounds,
# interleaved, of examples/bench_lammps_gpu.in with `omp 4 threads 4`:
#   si_every10_upd / _noupd  shipped Si model, 1,000 atoms, 2,000 steps, list rebuilt every 10
#                            steps, graph update on (default) / DS4SCI_CUDA_GRAPH_UPDATE=0
#   si_norebuild             the same without rebuilds (the graph's best case)
#   ref_auto_upd / _noupd    reference model, 1,000 atoms, 300 steps, LAMMPS's rebuild rule
#                            (its random weights heat the box: a rebuild every other step)
# Each line: loop time, Pair time and share, list builds, the core's cuda_graph counts
# (DS4SCI_CUDA_PROFILE), then the last thermo line.
set -u
R=$(pwd)
OUT=${OUT:-$R/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$R/.lammps-gpu/bin:$R/.gpudeps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "${1:-}" = checks ]; then
    shift
    ROOT=$R
    LG=/tmp/gpu_lammps_small_logs
    # shellcheck source=tools/gpu_lib.sh
    . "$R/tools/gpu_lib.sh" # B (.gpufinal), t, ck, the summary $S, logs.tgz on exit
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
LMP=$R/.lammps-gpu/bin/lmp
PL=$R/.lammps-gpu/bin/ds4sciplugin.so
run() {
    tag=$1
    shift
    # shellcheck disable=SC2086 # LARGS: several words
    env "$@" DS4SCI_CUDA_PROFILE="/tmp/prof_$tag.txt" timeout 100 "$LMP" \
        -in examples/bench_lammps_gpu.in -var plugin "$PL" -var omp 4 -var threads 4 $LARGS \
        -log "/tmp/lmp_$tag.log" > /dev/null 2>&1
    echo "$tag rc=$? $(grep -E '^Loop time' "/tmp/lmp_$tag.log") |" \
         "$(grep -E '^Pair ' "/tmp/lmp_$tag.log" | awk '{print "Pair", $3, $NF"%"}') |" \
         "$(grep 'Neighbor list builds' "/tmp/lmp_$tag.log") | $(grep cuda_graph "/tmp/prof_$tag.txt")"
    grep -E '^ +[0-9]+ +[-0-9.e+]+ ' "/tmp/lmp_$tag.log" | tail -1
}
for r in $(seq 1 "${1:-3}"); do
    LARGS="-var system si -var n 5 -var steps 2000 -var neigh_every 10 -var neigh_check no"
    run "si_every10_upd_$r"
    run "si_every10_noupd_$r" DS4SCI_CUDA_GRAPH_UPDATE=0
    LARGS="-var system si -var n 5 -var steps 2000 -var neigh_every 1000000 -var neigh_check no"
    run "si_norebuild_$r"
    LARGS="-var system ref -var n 10 -var steps 300"
    run "ref_auto_upd_$r"
    run "ref_auto_noupd_$r" DS4SCI_CUDA_GRAPH_UPDATE=0
done
