#!/usr/bin/env bash
# tools/gpu_variants.sh - several builds (commits or branches) of the CUDA backend checked and
# timed side by side in one H200 call (docs/gpu.md v24 did this by hand for two branches).
#
#   tools/gpu_variants.sh pack REV [REV ...]   here: each REV built (CUDA, Release) in a
#                                              worktree /tmp/ds4sci-var-<i>; its check_cuda_backend
#                                              (xz-compressed) and bench_gpu into .gpuvar<i>/ with
#                                              COMMIT (the commit, the worktree: the test data's path)
#   tools/gpu_variants.sh run                  there (device `run`, carry the .gpuvar<i> folders and
#                                              .gpudeps): per build golden, api, vs_cpu and CASES,
#                                              then bench_gpu of every build interleaved, REPS rounds
#
# The carry limit is 64 MiB with the tracked tree (~11 MB): a build is ~20 MB with its test
# binary compressed, so two fit (three: carry two per call). run decompresses the test binaries
# in place: pack again (or xz them) before carrying from this machine once more.
# Environment for run: OUT (files back: summary.txt, logs.tgz), SIZES (default "1000 10648
# 1000000"), REPS (2), STEPS (5), CASES (";"-separated extra checks "case ENV=VALUE ...", default
# "vs_cpu DS4SCI_CUDA_SPLIT=1"), ENVS (";"-separated env sets benched for every build, e.g.
# "DS4SCI_CUDA_SGEMM=own"; empty: the defaults only).
# Environment for pack: JOBS (default 2).
set -u -o pipefail
MODE=${1:-run}
shift || true
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "$MODE" = pack ]; then
    set -e
    [ $# -ge 1 ] || { echo "usage: $0 pack REV [REV ...]" >&2; exit 2; }
    i=0
    for rev in "$@"; do
        i=$((i + 1))
        W=/tmp/ds4sci-var-$i
        c=$(git -C "$ROOT" rev-parse "$rev")
        if [ -d "$W" ]; then git -C "$W" checkout -q --detach "$c"
        else git -C "$ROOT" worktree add -q --detach "$W" "$c"; fi
        cmake -S "$W" -B "$W/build" -DDS4SCI_CUDA=ON -DCMAKE_BUILD_TYPE=Release > /dev/null
        nice make -C "$W/build" -j "${JOBS:-2}" check_cuda_backend bench_gpu > /dev/null
        D=$ROOT/.gpuvar$i
        rm -rf "$D" && mkdir -p "$D"
        cp "$W/build/tests/check_cuda_backend" "$W/build/examples/bench_gpu" "$D/"
        strip --strip-unneeded "$D/check_cuda_backend" "$D/bench_gpu"
        xz -T2 -3 -f "$D/check_cuda_backend"
        printf '%s\n%s\n%s\n' "$c" "$W" "$rev" > "$D/COMMIT"
        grep -qx "/.gpuvar$i/" "$ROOT/.git/info/exclude" 2>/dev/null ||
            echo "/.gpuvar$i/" >> "$ROOT/.git/info/exclude"
        echo ".gpuvar$i: $rev ($c)"
    done
    tree=$(git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 du -cb 2>/dev/null) | tail -1 |
           cut -f1)
    du -cb "$ROOT"/.gpuvar* "$ROOT/.gpudeps" | tail -1 |
        awk -v t="$tree" '{ printf "carry %.1f MiB of 64 with the tracked tree (%.1f MiB)\n",
                                   ($1 + t) / 1048576, t / 1048576 }'
    exit 0
fi

# ---- run, on the GPU machine ----
OUT=${OUT:-$ROOT/gpu-out}
LG=/tmp/gpu_variants_logs
# shellcheck source=tools/gpu_lib.sh
. "$ROOT/tools/gpu_lib.sh" # t, ck (with B and T), the summary $S, logs.tgz on exit
R=$S
mapfile -t VARS < <(ls -d .gpuvar* 2>/dev/null | sort -V)
[ "${#VARS[@]}" -gt 0 ] || { echo "no .gpuvar* folders here"; exit 1; }
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } >> "$R" 2>&1
for v in "${VARS[@]}"; do
    echo "$v: $(sed -n 3p "$v/COMMIT") $(head -1 "$v/COMMIT")" >> "$R"
    if [ -f "$v/check_cuda_backend.xz" ]; then
        xz -d -f "$v/check_cuda_backend.xz" 2>/dev/null ||
            python3 -c "import lzma,sys; open(sys.argv[1][:-3],'wb').write(lzma.open(sys.argv[1]).read())" \
                "$v/check_cuda_backend.xz"
        chmod +x "$v/check_cuda_backend"
    fi
    # the test binary reads its data under the path it was built in
    built=$(sed -n 2p "$v/COMMIT")
    [ -n "$built" ] && [ ! -e "$built" ] && mkdir -p "$(dirname "$built")" && ln -s "$ROOT" "$built"
done

IFS=';' read -r -a EXTRA <<< "${CASES-vs_cpu DS4SCI_CUDA_SPLIT=1}"
for v in "${VARS[@]}"; do
    for c in golden api vs_cpu "${EXTRA[@]}"; do
        [ -n "$c" ] || continue
        read -r -a w <<< "$c"
        T=$LG/${v#.}_$(echo "$c" | tr ' =' '__').log
        B=$ROOT/$v ck "$v $c" 300 CK_RUN_CASE="${w[0]}" "${w[@]:1}"
        grep -E "Checks|:F:|:E:" "$T" | head -5 >> "$R"
    done
done

IFS=';' read -r -a ENV_SETS <<< "${ENVS:-}"
ENV_SETS=("" "${ENV_SETS[@]}")
for r in $(seq 1 "${REPS:-2}"); do
    for v in "${VARS[@]}"; do
        for e in "${ENV_SETS[@]}"; do
            log=$LG/bench_${v#.}_$(echo "${e:-default}" | tr ' =' '__')_$r.log
            # shellcheck disable=SC2086
            env BENCH_PROFILE=0 $e timeout 200 "$ROOT/$v/bench_gpu" tests/golden/typical.safetensors \
                "${STEPS:-5}" ${SIZES:-1000 10648 1000000} > "$log" 2>&1
            t "bench $v ${e:-default} round $r" $?
        done
    done
done
{
    echo "==== bench (s/step per size; energy printed to compare the builds' results)"
    for f in "$LG"/bench_*.log; do
        echo "== $(basename "$f" .log)"
        grep -E "^ +[0-9]+ |energy" "$f"
    done
} >> "$R"
cat "$R"
