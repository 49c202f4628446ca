#!/usr/bin/env bash
# tools/run_example.sh [extra lmp arguments, e.g. -var steps 200]
#
# Installs what is missing, builds LAMMPS (PLUGIN package), the ds4sci core and the plugin
# (tools/run_tests.sh --build-only), then runs examples/water.in: 192 H/O atoms with the
# RANDOM-WEIGHTS demo model potentials/random-et-HO.safetensors, on the GPU when there is one,
# else on the CPU. Prints LAMMPS's thermo output and its timing breakdown.
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
echo "run_example: examples/water.in on device '$device' (RANDOM-WEIGHTS model: a demo, not physics)"
"${mpi[@]}" "$LAMMPS_BINARY" -in examples/water.in -log none \
    -var plugin build/plugin/ds4sciplugin.so -var device "$device" "$@"
