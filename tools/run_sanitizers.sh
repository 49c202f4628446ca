#!/usr/bin/env bash
# tools/run_sanitizers.sh [bookworm|trixie]
#
# The CPU code under AddressSanitizer and UndefinedBehaviorSanitizer (-DDS4SCI_SANITIZE=ON,
# -fno-sanitize-recover=all: any finding fails the test): the core, its Check suites (label cpu,
# leak checking on) and the plugin in the LAMMPS tests (label lammps, 1, 2 and 4 ranks; the
# LAMMPS executable is not instrumented, so the sanitizer runtimes are preloaded into it and
# leak checking is off: MPI's own allocations would be reported). Needs the LAMMPS that
# tools/run_tests.sh builds (build-lammps/<suite>/); builds into build-asan/ (no CUDA: the
# kernels are checked by compute-sanitizer on the GPU machine, docs/gpu.md).
set -euo pipefail
suite=${1:-bookworm}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
jobs=${DS4SCI_JOBS:-$(nproc)}
env_file=build-lammps/$suite/lammps.env
if [ ! -f "$env_file" ]; then
    echo "run_sanitizers: $env_file missing: run tools/run_tests.sh $suite first" >&2
    exit 2
fi
# shellcheck source=/dev/null
source "$env_file"
build="build-asan"
mkdir -p "$build"
cmake -S "$root" -B "$build" -D CMAKE_BUILD_TYPE=RelWithDebInfo -D DS4SCI_CUDA=OFF \
    -D DS4SCI_SANITIZE=ON -D LAMMPS_SOURCE_DIR="$LAMMPS_SOURCE_DIR" \
    -D LAMMPS_BINARY="$LAMMPS_BINARY" > "$build/configure.log" 2>&1 ||
    { tail -20 "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$jobs" > "$build/build.log" 2>&1 || { tail -40 "$build/build.log"; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir "$build" -L cpu --output-on-failure
preload=$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)
LD_PRELOAD=$preload ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 \
    ctest --test-dir "$build" -L lammps -LE gpu --output-on-failure
