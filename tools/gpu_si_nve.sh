#!/usr/bin/env bash
# tools/gpu_si_nve.sh - the shipped Si model's NVE energy drift on one GPU (issue 4; BRIEF's target:
# < 1e-4 eV/atom/ns at 1 fs in fp32): examples/si_nve.in with device cuda, 1,000 atoms, 100 ps
# of NVE at 1 fs after 2 ps of Langevin at 600 K (optionally a 0.5 fs run beside it, same GPU,
# same thermalised start), stopped at DEADLINE, then the drift fit of whatever the logs hold.
# Run from the repository root on the GPU machine, with the binaries of `tools/gpu_lammps.sh pack`
# carried in .lammps-gpu/ (and .gpudeps/); it may share the machine with other work:
#
#   CUDA_VISIBLE_DEVICES=1 DEADLINE=270 OUT=$OUT tools/gpu_si_nve.sh
#
# Environment (all optional):
#   OUT        logs (default ./gpu-si-nve-out): si_nve_dt<dt>.log per run (LAMMPS screen
#              output, thermo every 100 steps with v_de = (Etot - Etot(0)) / atoms),
#              env.log, drift.json (examples/si_analysis.py --nve-logs: slope, max |dE|, per-10-ps
#              windows) and summary.txt; 5 files
#   DEADLINE   seconds after the start at which unfinished runs are stopped (default 270); the
#              analysis then covers what each log holds (the 2 ps thermalisation is excluded)
#   N          diamond cells per side (default 5: 1,000 atoms)
#   RUNS       "dt steps" pairs, one run each, concurrently (default "0.001 100000": 100 ps at
#              1 fs; add "0.0005 200000" for the 0.5 fs control, which shares the GPU and slows
#              both; docs/si_model.md has the expected speed)
#   THERM      Langevin steps at 1 fs before NVE (default 2000)
#   MODEL      model file (default potentials/si-sw-et.safetensors)
#   LMP, PLUGIN  binaries (default .lammps-gpu/bin/lmp and ds4sciplugin.so)
#   NP         MPI ranks per run (default 1; more: mpirun, one GPU per rank where there are as
#              many, the plugin's halo plan between them)
set -u -o pipefail
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-si-nve-out}
mkdir -p "$OUT"
T0=$(date +%s)
since() { echo $(( $(date +%s) - T0 )); }
DEADLINE=${DEADLINE:-270}
N=${N:-5}
RUNS=${RUNS:-"0.001 100000"}
THERM=${THERM:-2000}
PACK=$ROOT/.lammps-gpu
LMP=${LMP:-$PACK/bin/lmp}
PLUGIN=${PLUGIN:-$PACK/bin/ds4sciplugin.so}
DEVICE=${DEVICE:-cuda}
NP=${NP:-1}
launch=()
[ "$NP" -gt 1 ] && launch=(mpirun -np "$NP" --bind-to none -x LD_LIBRARY_PATH -x OMP_NUM_THREADS)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MODEL=${MODEL:-potentials/si-sw-et.safetensors}
export LD_LIBRARY_PATH="$PACK/bin:$ROOT/.gpudeps/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); commit: $(git rev-parse HEAD 2>/dev/null)"
    echo "binaries: $(head -2 "$PACK/COMMIT" 2>/dev/null | tr '\n' ' ')"
    echo "model: $(sha256sum "$MODEL")"
    echo "N=$N ($((8 * N * N * N)) atoms) RUNS=$RUNS THERM=$THERM DEADLINE=$DEADLINE device=$DEVICE NP=$NP"
    echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
    nvidia-smi --query-gpu=index,name,memory.used,utilization.gpu --format=csv 2>&1
} > "$OUT/env.log"
cat "$OUT/env.log"
if ldd "$LMP" "$PLUGIN" 2>&1 | grep -q "not found"; then
    ldd "$LMP" "$PLUGIN" | grep "not found" | tee -a "$OUT/env.log"
    echo "carried binaries do not load here (run tools/gpu_lammps.sh pack first)"; exit 1
fi

pids=()
set -- $RUNS
while [ $# -ge 2 ]; do
    OMP_NUM_THREADS=1 stdbuf -oL "${launch[@]}" "$LMP" -in examples/si_nve.in -var plugin "$PLUGIN" \
        -var device "$DEVICE" -var model "$MODEL" -var n "$N" -var therm "$THERM" -var dt "$1" -var steps "$2" \
        -log none > "$OUT/si_nve_dt$1.log" 2>&1 &
    pids+=($!)
    shift 2
done
for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ "$(since)" -lt "$DEADLINE" ]; do sleep 1; done
done
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
wait
{
    echo "stopped/finished at $(since) s"
    for f in "$OUT"/si_nve_dt*.log; do
        echo "== $f: $(grep -c '^ *[0-9]' "$f") thermo lines"; grep -E "ERROR|NVE " "$f"; tail -n 2 "$f"
    done
    "${PYTHON:-python3}" examples/si_analysis.py --nve-logs "$OUT"/si_nve_dt*.log --json "$OUT/drift.json"
} 2>&1 | tee "$OUT/summary.txt"
