#!/usr/bin/env bash
# tools/sass_count.sh - the fused edge kernels' machine code measured without a GPU: for each
# kernel of kernels/edge_fwd.cu, edge_bwd.cu and edge_split.cu, registers and spill bytes
# (ptxas -v), and for the default instantiations (F = 128: CPL 4, SiLU with __expf, both filters
# dk and dv: ACT_SILU_FAST_DKV) the SASS
# instruction count and every loop's body size and FFMA count (backward branches in
# cuobjdump -sass). The edge kernels are issue bound (docs/gpu.md v19: 40-50% of the stall
# samples "selected" or "not selected"), so fewer instructions per edge is what makes them
# faster; a change can be sized here before a GPU call measures it.
#
#   tools/sass_count.sh [BUILD]     BUILD: a configured CUDA build folder (default build-k)
#
# Needs nvcc (the CUDA toolkit of the build) and cuobjdump: taken from PATH or the toolkit,
# else from PyPI's nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels (downloaded once into
# $SASS_TOOLS, default ~/.cache/ds4sci-sass; only unpacked, nothing is installed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build-k}" && pwd)
RSP=$BUILD/kernels/CMakeFiles/ds4sci_kernels.dir/includes_CUDA.rsp
[ -f "$RSP" ] || { echo "no CUDA build in $BUILD (cmake -DDS4SCI_CUDA=ON first)" >&2; exit 1; }
NVCC=$(grep -m1 '^CMAKE_CUDA_COMPILER:' "$BUILD/CMakeCache.txt" | cut -d= -f2)
CUOBJDUMP=$(command -v cuobjdump || true)
if [ -z "$CUOBJDUMP" ] && [ -x "$(dirname "$NVCC")/cuobjdump" ]; then
    CUOBJDUMP=$(dirname "$NVCC")/cuobjdump
fi
if [ -z "$CUOBJDUMP" ]; then
    T=${SASS_TOOLS:-$HOME/.cache/ds4sci-sass}
    CUOBJDUMP=$(find "$T" -name cuobjdump -type f 2>/dev/null | head -1 || true)
    if [ -z "$CUOBJDUMP" ]; then
        mkdir -p "$T"
        python3 -m pip download --no-deps -q -d "$T" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
        (cd "$T" && for w in *.whl; do python3 -m zipfile -e "$w" .; done)
        CUOBJDUMP=$(find "$T" -name cuobjdump -type f | head -1)
        chmod +x "$CUOBJDUMP" "$(dirname "$CUOBJDUMP")/nvdisasm"
    fi
    PATH=$(dirname "$CUOBJDUMP"):$PATH   # its nvdisasm
    export PATH
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for f in edge_fwd edge_bwd edge_split; do
    (cd "$BUILD/kernels" && "$NVCC" --options-file "$RSP" -O3 -DNDEBUG \
        --generate-code=arch=compute_90,code=[sm_90] --expt-relaxed-constexpr -std=c++17 \
        -Xptxas -v -x cu -c "$ROOT/kernels/$f.cu" -o "$W/$f.o") > "$W/$f.log" 2>&1 ||
        { tail -20 "$W/$f.log"; exit 1; }
done
echo "== registers and spill stores (ptxas -v)"
cat "$W"/*.log | python3 -c '
import re, sys
cur = None
for l in sys.stdin:
    m = re.search(r"Compiling entry function .(\w+).", l)
    if m:
        cur = m.group(1)
    m = re.search(r"(\d+) bytes spill stores", l)
    if m:
        spill = int(m.group(1))
    m = re.search(r"Used (\d+) registers", l)
    if m and cur:
        print("%-78s regs %3s spill %4d" % (cur[:78], m.group(1), spill))
        cur = None
' | sort
for k in "edge_fwd _Z10k_edge_fwdILi4ELi3ELb0EEv14et_edge_common13et_edge_layeriPf" \
         "edge_bwd _Z17k_edge_bwd_mergedILi4ELi3ELb0EEv14et_edge_common13et_edge_layeriPf"; do
    # shellcheck disable=SC2086 # split on purpose: object name, kernel name
    set -- $k
    "$CUOBJDUMP" -sass -fun "$2" "$W/$1.o" > "$W/$2.sass"
    echo "== $2"
    python3 - "$W/$2.sass" <<'EOF'
import re, sys
lines = [l for l in open(sys.argv[1]) if re.match(r"\s+/\*[0-9a-f]{4}\*/", l)]
addr = [int(re.match(r"\s+/\*([0-9a-f]{4})\*/", l).group(1), 16) for l in lines]
print("SASS instructions %d" % len(lines))
for i, l in enumerate(lines):
    m = re.search(r"BRA[^;]*0x([0-9a-f]+)", l)
    if not m:
        continue
    t = int(m.group(1), 16)
    if t < addr[i] and t in addr:
        j = addr.index(t)
        body = lines[j:i + 1]
        if 40 <= len(body) <= 800:   # the k loops and the per-edge loops, not the row loops
            ffma = sum("FFMA" in b for b in body)
            print("loop %5d-%5d: %4d instructions, FFMA %3d" % (j, i, len(body), ffma))
EOF
done
