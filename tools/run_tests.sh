#!/usr/bin/env bash
# tools/run_tests.sh [--build-only] [--lammps-only] [bookworm|trixie]
#
# From a fresh Debian machine (as root): installs the missing build packages with apt-get, builds
# a LAMMPS with the PLUGIN package from Debian's source package (tools/build_lammps.sh; bookworm
# = LAMMPS 29 Sep 2021 update 2 by default, trixie = 4 Feb 2025), builds the ds4sci core (CUDA
# backend too when nvcc is found), the plugin against that LAMMPS, and runs every ctest suite:
# the core's Check suites (label cpu; gpu when a GPU is present) and the LAMMPS tests (label
# lammps, under mpirun with 1, 2 and 4 ranks).
#   --build-only   build everything, run nothing (tools/run_example.sh uses this)
#   --lammps-only  configure without CUDA and run only the LAMMPS tests (CI's second LAMMPS)
# Build folders: build-lammps/<suite>/ (LAMMPS) and build/ (bookworm) or build-<suite>/ (other).
set -euo pipefail

build_only=0
lammps_only=0
suite=bookworm
for arg in "$@"; do
    case "$arg" in
        --build-only) build_only=1 ;;
        --lammps-only) lammps_only=1 ;;
        bookworm | trixie) suite=$arg ;;
        *)
            echo "usage: $0 [--build-only] [--lammps-only] [bookworm|trixie]" >&2
            exit 2
            ;;
    esac
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
jobs=${DS4SCI_JOBS:-$(nproc)}

# ---- packages ------------------------------------------------------------------------------
packages=(build-essential cmake pkg-config libcjson-dev check openmpi-bin libopenmpi-dev dpkg-dev
          python3 python3-numpy xz-utils ca-certificates)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing packages: ${missing[*]} (run as root, or apt-get install them)" >&2
        exit 1
    fi
    echo "run_tests: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The CUDA toolkit's usual place, when it is not on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi

# ---- LAMMPS, core, plugin ------------------------------------------------------------------
bash tools/build_lammps.sh "$suite"
# shellcheck disable=SC1090
source "build-lammps/$suite/lammps.env"

build=$root/build
[ "$suite" = bookworm ] || build=$root/build-$suite
cuda=AUTO
[ "$lammps_only" = 1 ] && cuda=OFF
mkdir -p "$build"
nice -n 10 cmake -S "$root" -B "$build" -D CMAKE_BUILD_TYPE=RelWithDebInfo -D DS4SCI_CUDA=$cuda \
    -D LAMMPS_SOURCE_DIR="$LAMMPS_SOURCE_DIR" -D LAMMPS_BINARY="$LAMMPS_BINARY" >"$build/ds4sci-cmake.log" 2>&1 ||
    { tail -n 40 "$build/ds4sci-cmake.log" >&2; exit 1; }
grep -E "ds4sci:" "$build/ds4sci-cmake.log" || true
nice -n 10 cmake --build "$build" -j "$jobs"
[ "$build_only" = 1 ] && exit 0

# ---- tests ---------------------------------------------------------------------------------
ctest_args=(--test-dir "$build" --output-on-failure -j 2)
if [ "$lammps_only" = 1 ]; then
    ctest_args+=(-L lammps)
elif ! nvidia-smi -L >/dev/null 2>&1; then
    echo "run_tests: no GPU here: skipping the tests labelled gpu"
    ctest_args+=(-LE gpu)
fi
ctest "${ctest_args[@]}"
