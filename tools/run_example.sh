#!/usr/bin/env bash
# tools/run_example.sh [extra lmp arguments, e.g. -var steps 200]
#
# Installs what is missing, builds LAMMPS (PLUGIN package), the ds4sci core and the plugin
# (tools/run_tests.sh --build-only), then runs examples/si_nve.in with the shipped, trained
# silicon potential potentials/si-sw-et.safetensors (model card: potentials/si-sw-et.md):
# 64 atoms, 0.5 ps Langevin at 600 K then 1000 NVE steps of 1 fs, on the GPU when there is one,
# else on the CPU (about two minutes on one core). Prints LAMMPS's thermo output (total-energy
# change per atom) and its timing breakdown. Arguments come first, so they win (LAMMPS keeps
# the first -var of a name), e.g. -var n 3 -var steps 10000 for the full 216-atom, 10 ps run of docs/si_model.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/run_tests.sh --build-only
# shellcheck disable=SC1091
source build-lammps/bookworm/lammps.env

device=cpu
if nvidia-smi -L >/dev/null 2>&1; then
    device=auto
fi
mpi=(mpirun -np "${DS4SCI_RANKS:-1}")
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
echo "run_example: examples/si_nve.in (trained ET silicon potential si-sw-et) on device '$device'"
"${mpi[@]}" "$LAMMPS_BINARY" -in examples/si_nve.in -log none \
    "$@" -var plugin build/plugin/ds4sciplugin.so -var device "$device" \
    -var n 2 -var therm 500 -var steps 1000
