#!/usr/bin/env bash
# tools/build_lammps.sh [bookworm|trixie] [prefix]
# tools/build_lammps.sh prune <suite> <dest>
# tools/build_lammps.sh tree <tree> <prefix>
#
# Builds a real LAMMPS with the PLUGIN package (plus MANYBODY, so Stillinger-Weber and Tersoff
# reference potentials run in the same binary) from Debian's `lammps` source package:
#   bookworm: LAMMPS 29 Sep 2021, update 2     trixie: LAMMPS 4 Feb 2025
# Shared libraries, MPI (Debian OpenMPI), exceptions on where the version has the option.
#
# Layout (prefix defaults to <repo>/build-lammps/<suite>):
#   <repo>/.lammps/<suite>/          downloaded source package and its unpacked tree (cache)
#   <prefix>/build/lmp               the LAMMPS executable (build tree; RPATH finds liblammps.so)
#   <prefix>/lammps.env              LAMMPS_SOURCE_DIR=<tree>/src and LAMMPS_BINARY=<lmp>
# The source download uses a private apt state in the cache folder (deb-src entries for both
# suites in <cache>/apt/sources.list.d/ds4sci-src.sources), so the system's apt lists are not
# touched and no root is needed. A second run with everything present costs seconds.
#
# prune: copy only what the cmake build with PLUGIN + MANYBODY needs (cmake/, src/*.cpp, src/*.h,
# src/fmt, src/PLUGIN, src/MANYBODY, src/OPENMP, src/Purge.list, potentials/Si.sw, LICENSE, README; about 15 MB) of the
# suite's tree into <dest>, for machines without network (the GPU machine; docs/lammps_gpu.md).
# tree: build that (pruned or full) tree into <prefix> without fetching anything.
set -euo pipefail

usage() {
    echo "usage: $0 [bookworm|trixie] [prefix] | prune <suite> <dest> | tree <tree> <prefix>" >&2
    exit 2
}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
given_tree=""
case "${1:-bookworm}" in
    prune)
        [ $# -eq 3 ] || usage
        src=${DS4SCI_LAMMPS_CACHE:-$root/.lammps}/$2/tree
        [ -f "$src/src/PLUGIN/plugin.cpp" ] || { echo "error: no $src (run $0 $2 first)" >&2; exit 1; }
        rm -rf "$3"
        mkdir -p "$3/src" "$3/potentials"
        cp -r "$src/cmake" "$3/"
        cp "$src"/src/*.cpp "$src"/src/*.h "$src/src/Purge.list" "$3/src/"
        cp -r "$src/src/PLUGIN" "$src/src/MANYBODY" "$src/src/OPENMP" "$src/src/fmt" "$3/src/"
        cp "$src/potentials/Si.sw" "$3/potentials/"
        cp "$src/LICENSE" "$src/README" "$3/"
        echo "build_lammps: pruned $src into $3 ($(du -sh "$3" | cut -f1))"
        exit 0
        ;;
    tree)
        [ $# -eq 3 ] || usage
        given_tree=$(cd "$2" && pwd)
        suite=tree
        prefix=$3
        ;;
    bookworm | trixie)
        suite=${1:-bookworm}
        prefix=${2:-$root/build-lammps/$suite}
        ;;
    *) usage ;;
esac
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
cache=${DS4SCI_LAMMPS_CACHE:-$root/.lammps}
jobs=${DS4SCI_JOBS:-$(nproc)}

log() { echo "build_lammps[$suite]: $*"; }

# ---- source: apt-get source with a private apt state ---------------------------------------
apt_dir=$cache/apt
apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
          -o "APT::Sandbox::User=$(id -un)" -o "Debug::NoLocking=1")

fetch_source() {
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    cat >"$apt_dir/sources.list.d/ds4sci-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    if ! ls "$apt_dir/lists/"*_"${suite}"_main_source_Sources* >/dev/null 2>&1; then
        log "apt-get update (private source lists in $apt_dir)"
        apt-get "${apt_opts[@]}" -q update
    fi
    local dl=$cache/$suite/download version
    mkdir -p "$dl"
    # The version this suite carries (apt-get's "lammps/<suite>" picks by binary package, which
    # the private state does not have).
    version=$(/usr/lib/apt/apt-helper cat-file "$apt_dir/lists/"*_"${suite}"_main_source_Sources* |
        awk '/^Package: lammps$/ {p = 1} p && /^Version:/ && !v {v = $2} /^$/ {p = 0} END {print v}')
    [ -n "$version" ] || { echo "error: no lammps source package in $suite" >&2; exit 1; }
    if ! ls "$dl"/lammps_*.orig.tar.* >/dev/null 2>&1; then
        log "downloading the lammps $version source package from $suite"
        # The upstream tarball is all we use; a mirror that lacks the .dsc is not an error.
        (cd "$dl" && apt-get "${apt_opts[@]}" -q source --download-only "lammps=$version") ||
            log "apt-get source reported an error; continuing if the upstream tarball arrived"
    fi
    local orig
    orig=$(ls "$dl"/lammps_*.orig.tar.*)
    log "unpacking $(basename "$orig")"
    rm -rf "$cache/$suite/tree.tmp"
    mkdir -p "$cache/$suite/tree.tmp"
    tar -xf "$orig" -C "$cache/$suite/tree.tmp" --strip-components=1
    mv "$cache/$suite/tree.tmp" "$cache/$suite/tree"
}

tree=${given_tree:-$cache/$suite/tree}
if [ ! -f "$tree/cmake/CMakeLists.txt" ]; then
    [ -z "$given_tree" ] || { echo "error: $tree has no cmake/CMakeLists.txt" >&2; exit 1; }
    fetch_source
fi
[ -f "$tree/src/PLUGIN/plugin.cpp" ] || { echo "error: $tree has no src/PLUGIN" >&2; exit 1; }

# ---- configure and build ---------------------------------------------------------------------
cmake_args=(-S "$tree/cmake" -B "$prefix/build" -D CMAKE_BUILD_TYPE=Release
            -D BUILD_SHARED_LIBS=on -D BUILD_MPI=on -D BUILD_OMP=on
            -D PKG_PLUGIN=on -D PKG_MANYBODY=on
            -D BUILD_TOOLS=off -D WITH_JPEG=off -D WITH_PNG=off -D WITH_FFMPEG=off
            -D WITH_GZIP=off -D WITH_CURL=off)
# DS4SCI_LAMMPS_OPENMP=1: also the OPENMP package, for `package omp N` (threaded neighbour-list
# builds; docs/lammps_gpu.md). Off by default: CI's LAMMPS stays as it was.
if [ "${DS4SCI_LAMMPS_OPENMP:-0}" = 1 ]; then
    cmake_args+=(-D PKG_OPENMP=on)
fi
if grep -q "LAMMPS_EXCEPTIONS" "$tree/cmake/CMakeLists.txt"; then
    cmake_args+=(-D LAMMPS_EXCEPTIONS=on)
fi
# Debian's package builds the LAMMPS shell and docs; we need neither.
grep -q "BUILD_LAMMPS_SHELL" "$tree/cmake/CMakeLists.txt" && cmake_args+=(-D BUILD_LAMMPS_SHELL=off)

stamp=$prefix/build/ds4sci.stamp
want="${cmake_args[*]}"
lmp=$prefix/build/lmp
if [ -x "$lmp" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "up to date: $lmp"
else
    log "configuring LAMMPS in $prefix/build"
    nice -n 10 cmake "${cmake_args[@]}" >"$prefix/cmake.log" 2>&1 || {
        tail -n 40 "$prefix/cmake.log" >&2
        exit 1
    }
    log "building with $jobs jobs (log: $prefix/build.log)"
    nice -n 10 cmake --build "$prefix/build" -j "$jobs" >"$prefix/build.log" 2>&1 || {
        tail -n 40 "$prefix/build.log" >&2
        exit 1
    }
    echo "$want" >"$stamp"
fi

cat >"$prefix/lammps.env" <<EOF
LAMMPS_SOURCE_DIR=$tree/src
LAMMPS_BINARY=$lmp
EOF
log "LAMMPS_SOURCE_DIR=$tree/src"
log "LAMMPS_BINARY=$lmp"
