#!/usr/bin/env bash
# gpu_bench.sh - issue 5's side-by-side benchmark in ONE job on one GPU: the fused CUDA path,
# the unfused cuSPARSE baseline (same binary, DS4SCI_CUDA_EDGE=unfused) and TorchMD-Net itself,
# same weights (the model file), same boxes (examples/bench_gpu.c's systems, replayed by
# tools/bench_torchmdnet.py), then a table of atom-steps/s and peak GPU memory per atom.
#
# Run from the repository root on the GPU machine (docs/gpu_bench.md: the command used, results):
#
#   tools/gpu_bench.sh [sizes ...]        default sizes: 1000 10000 27000 100000 1000000
#
# Environment (all optional):
#   OUT        folder for the logs and the table (default ./gpu-bench-out); written there
#              (at most 8 files, what the GPU machine's tool brings back): env.log, fused.log,
#              unfused.log, torchmdnet.log, torchmdnet_bench.json, fused_large.log (with LARGE),
#              table.md, build.log (only when it builds)
#   MODEL      model file (default tests/golden/typical.safetensors: the BRIEF reference model
#              F128 L6 K32 H8, 5 A, vector_cutoff, neighbour embedding, random weights)
#   STEPS      timed steps per size after 2 warm-ups (default 3; the median is reported)
#   BUDGET_S   wall-clock budget of the whole job in seconds (default 230); every run is
#              bounded by `timeout` to what is left, and a phase with too little left is skipped
#   FUSED_MAX, UNFUSED_MAX, TORCH_MAX   per-phase caps in seconds (default 110, 60, 60)
#   LARGE      fused-only sizes tried after the rest, one process each, 1 timed step, while
#              time is left (default "2000000 3000000 4000000"; "" to skip)
#   PREBUILT   folder holding a prebuilt bench_gpu (else it is built in $BUILD with cmake)
#   BUILD      build folder when building here (default ./build-bench-device)
#   DEPS       check/cJSON for machines without them (default ./.gpudeps; docs/gpu.md)
#   WHEELS     folder with the torchmd_net 3.1.0 and ase wheels (default ./.whl), installed to
#              /tmp/site when torchmdnet is not importable
#   COMMIT     commit id to record (default: git rev-parse HEAD, when .git is there)
#
# The three columns measure the same thing: one call = energy + forces (+ virial for ds4sci) of
# the whole periodic box, results back on the host. Memory: ds4sci's is the most (total - free)
# device memory seen after a call (bench_gpu, DS4SCI_CUDA_PROFILE); TorchMD-Net's the same
# measure (device_used_bytes) and, in its log, the allocator's peak. The job never fails as a
# whole because one column fails: each phase's status is in the table.
set -u -o pipefail
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-bench-out}
mkdir -p "$OUT"
MODEL=${MODEL:-$ROOT/tests/golden/typical.safetensors}
STEPS=${STEPS:-3}
BUDGET_S=${BUDGET_S:-230}
FUSED_MAX=${FUSED_MAX:-110}
UNFUSED_MAX=${UNFUSED_MAX:-60}
TORCH_MAX=${TORCH_MAX:-60}
LARGE=${LARGE-"2000000 3000000 4000000"}
DEPS=${DEPS:-$ROOT/.gpudeps}
WHEELS=${WHEELS:-$ROOT/.whl}
BUILD=${BUILD:-$ROOT/build-bench-device}
SIZES=${*:-"1000 10000 27000 100000 1000000"}
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }

if [ -d "$DEPS" ]; then
    export PKG_CONFIG_PATH="$DEPS/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$DEPS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $COMMIT"
    echo "sizes: $SIZES; steps: $STEPS; budget: $BUDGET_S s; model: $MODEL"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    nvcc --version 2>/dev/null | tail -1
    echo "cores: $(nproc)"
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

# ---- bench_gpu: prebuilt or built here ----
BENCH=""
if [ -n "${PREBUILT:-}" ] && [ -x "$PREBUILT/bench_gpu" ]; then
    if ldd "$PREBUILT/bench_gpu" | grep -q "not found"; then
        echo "prebuilt bench_gpu does not load here (missing libraries); building"
    else
        BENCH=$PREBUILT/bench_gpu
    fi
fi
if [ -z "$BENCH" ]; then
    ( cmake -S "$ROOT" -B "$BUILD" -DDS4SCI_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
      cmake --build "$BUILD" -j "$(nproc)" --target bench_gpu ) > "$OUT/build.log" 2>&1 ||
        { tail -30 "$OUT/build.log"; echo "BUILD FAILED (see $OUT/build.log)"; exit 1; }
    BENCH=$BUILD/examples/bench_gpu
fi
echo "bench_gpu: $BENCH"

status=()
run_phase() { # name cap logfile command...
    local name=$1 c=$2 log=$3; shift 3
    local t; t=$(cap "$c")
    if [ "$t" -lt 15 ]; then
        echo "skipped: $t s left of the budget" > "$log"
        status+=("$name: skipped (budget)")
        return
    fi
    local s; s=$(date +%s)
    echo "== $name (timeout $t s): $*"
    timeout "$t" "$@" > "$log" 2>&1
    local rc=$?
    local why=""
    [ $rc -eq 124 ] && why=" (timed out: sizes after the last line in its log were not run)"
    status+=("$name: rc=$rc, $(( $(date +%s) - s )) s$why")
    cat "$log"
}

# ---- 1. fused, 2. unfused: same binary, same sizes, same systems ----
run_phase fused "$FUSED_MAX" "$OUT/fused.log" \
    env -u DS4SCI_CUDA_EDGE "$BENCH" "$MODEL" "$STEPS" $SIZES
run_phase unfused "$UNFUSED_MAX" "$OUT/unfused.log" \
    env DS4SCI_CUDA_EDGE=unfused "$BENCH" "$MODEL" "$STEPS" $SIZES

# ---- 3. TorchMD-Net ----
PY=${PYTHON:-python3}
if ! "$PY" -c "import torchmdnet" 2>/dev/null; then
    if ls "$WHEELS"/torchmd_net-*.whl > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl >> "$OUT/env.log" 2>&1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
export PYTHONUNBUFFERED=1
run_phase torchmdnet "$TORCH_MAX" "$OUT/torchmdnet.log" \
    env OUT="$OUT" "$PY" "$ROOT/tools/bench_torchmdnet.py" "$MODEL" "$STEPS" $SIZES

# ---- 4. larger sizes, fused only, while time is left ----
[ -n "$LARGE" ] && : > "$OUT/fused_large.log"
for n in $LARGE; do
    t=$(left)
    if [ "$t" -lt 40 ]; then
        echo "$n: not run ($t s left of the budget)" >> "$OUT/fused_large.log"
        status+=("fused $n: skipped (budget)")
        break
    fi
    echo "== fused $n (timeout $t s)"
    s=$(date +%s)
    timeout "$t" "$BENCH" "$MODEL" 1 "$n" >> "$OUT/fused_large.log" 2>&1
    rc=$?
    status+=("fused $n: rc=$rc, $(( $(date +%s) - s )) s$([ $rc -eq 124 ] && echo ' (timed out)')")
    if [ $rc -ne 0 ] || grep -q "does not run" "$OUT/fused_large.log"; then
        break
    fi
done
[ -n "$LARGE" ] && cat "$OUT/fused_large.log"

# ---- table ----
"$PY" - "$OUT" <<'EOF' > "$OUT/table.md" 2>&1
import json, os, re, sys
out = sys.argv[1]

def parse_bench(path):
    """bench_gpu output -> {atoms: record}"""
    res, cur = {}, None
    if not os.path.exists(path):
        return res
    for line in open(path, errors="replace"):
        t = line.split()
        m = re.match(r"\s*(\d+)\s+does not run: (.*)", line)
        if m:
            res[int(m.group(1))] = dict(fail=m.group(2).strip()[:90])
            cur = None
            continue
        if len(t) == 7 and t[0].isdigit():
            try:
                cur = dict(atoms=int(t[0]), epa=float(t[1]), s=float(t[3]), rate=float(t[4]),
                           peak=float(t[5]) * 1e6, bpa=float(t[6]))
            except ValueError:
                continue
            res[cur["atoms"]] = cur
            continue
        if cur is not None and line.strip().startswith("energy"):
            cur["energy"] = float(line.split()[1])
        if cur is not None and "per-stage" in line:
            cur["stages"] = {k: float(v) for k, v in re.findall(r"(\S+)=([0-9.]+)", line)}
    return res

fused = parse_bench(os.path.join(out, "fused.log"))
fused.update(parse_bench(os.path.join(out, "fused_large.log")))
unf = parse_bench(os.path.join(out, "unfused.log"))
tmd = {}
p = os.path.join(out, "torchmdnet.log")
if os.path.exists(p):
    for line in open(p, errors="replace"):
        if line.startswith("{"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "atoms" in r:
                tmd[r["atoms"]] = r

def rate(r):
    if r is None:
        return "not run"
    if "fail" in r:
        return "fails: " + r["fail"].split(":")[0]
    return f"{r['rate']:.3g}"

def mem(r):
    if r is None or "fail" in r:
        return "-"
    return f"{r['peak'] / 1e9:.1f} GB ({r['bpa'] / 1e3:.1f} KB)"

def trate(r):
    if r is None:
        return "not run"
    if r.get("oom"):
        return "out of memory"
    return f"{r['atom_steps_per_s']:.3g}"

def tmem(r):
    if r is None or r.get("oom"):
        return "-"
    u = r.get("device_used_bytes") or r["peak_bytes"]
    return f"{u / 1e9:.1f} GB ({u / r['atoms'] / 1e3:.1f} KB)"

def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)

print("| atoms | edges/atom | fused atom-steps/s | fused peak (per atom) | unfused atom-steps/s "
      "| unfused peak (per atom) | TorchMD-Net atom-steps/s | TorchMD-Net peak (per atom) "
      "| fused / unfused | fused / TorchMD-Net | energy rel. diff unfused, TorchMD-Net |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for n in sorted(set(fused) | set(unf) | set(tmd)):
    f, u, t = fused.get(n), unf.get(n), tmd.get(n)
    epa = next((r["epa"] for r in (f, u) if r and "epa" in r), None)
    if epa is None and t and "edges_per_atom" in t:
        epa = t["edges_per_atom"] - 1
    fu = f"{f['rate'] / u['rate']:.2f}x" if f and u and "rate" in f and "rate" in u else "-"
    ft = (f"{f['rate'] / t['atom_steps_per_s']:.2f}x"
          if f and t and "rate" in f and "atom_steps_per_s" in t else "-")
    diffs = []
    if f and "energy" in f:
        diffs.append(f"{rel(u['energy'], f['energy']):.1e}" if u and "energy" in u else "-")
        diffs.append(f"{rel(t['energy_without_shift'], f['energy']):.1e}"
                     if t and "energy_without_shift" in t else "-")
    print(f"| {n:,} | {epa if epa is None else f'{epa:.1f}'} | {rate(f)} | {mem(f)} | {rate(u)} "
          f"| {mem(u)} | {trate(t)} | {tmem(t)} | {fu} | {ft} | {', '.join(diffs) or '-'} |")
print()
print("Edge stages, mean ms per call (DS4SCI_CUDA_PROFILE; unfused: the whole backward is "
      "under edge-bwd-recv):")
print()
print("| atoms | fused edge-fwd | fused edge-bwd-recv + send | unfused edge-fwd | "
      "unfused edge-bwd | fused rest of the step | unfused rest of the step |")
print("|---|---|---|---|---|---|---|")
for n in sorted(set(fused) | set(unf)):
    f, u = fused.get(n) or {}, unf.get(n) or {}
    fs, us = f.get("stages"), u.get("stages")
    def g(st, k):
        return st.get(k, 0.0) if st else 0.0
    row = [f"{n:,}"]
    row.append(f"{g(fs, 'edge-fwd'):.1f}" if fs else "-")
    row.append(f"{g(fs, 'edge-bwd-recv') + g(fs, 'edge-bwd-send'):.1f}" if fs else "-")
    row.append(f"{g(us, 'edge-fwd'):.1f}" if us else "-")
    row.append(f"{g(us, 'edge-bwd-recv') + g(us, 'edge-bwd-send'):.1f}" if us else "-")
    for st in (fs, us):
        if st:
            rest = sum(v for k, v in st.items()
                       if k not in ("edge-fwd", "edge-bwd-recv", "edge-bwd-send"))
            row.append(f"{rest:.1f}")
        else:
            row.append("-")
    print("| " + " | ".join(row) + " |")
EOF
{
    echo
    echo "Phases:"
    for s in "${status[@]}"; do echo "- $s"; done
    echo "- whole job: $(( $(date +%s) - T0 )) s"
} >> "$OUT/table.md"
echo "==== table ($OUT/table.md)"
cat "$OUT/table.md"
