# tools/gpu_lib.sh - setup and helpers shared by tools/gpu_verify.sh and tools/gpu_sbs.sh on the
# GPU machine (sourced, not run). Before sourcing set ROOT (repository root), OUT (files back)
# and LG (log folder); after it, set T (the tests' log) before calling ck.
#   B           the prebuilt binaries (.gpufinal: check_cuda_backend, bench_gpu, COMMIT)
#   S, T0       the summary file and the start time
#   t NAME RC   one summary line with the seconds since T0
#   left SECS   true while fewer than SECS seconds have passed since T0
#   ck NAME TIMEOUT [VAR=VALUE ...]   one check_cuda_backend case, its errors reported (CK_REPORT)
# On exit the logs under LG are packed into $OUT/logs.tgz.
B=$ROOT/.gpufinal
mkdir -p "$OUT"
rm -rf "$LG"; mkdir -p "$LG"
export LD_LIBRARY_PATH=$ROOT/.gpudeps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# the test binary reads its data under the path it was built in
BUILT=$(sed -n 2p "$B/COMMIT" 2>/dev/null)
[ -n "$BUILT" ] && [ ! -e "$BUILT" ] && mkdir -p "$(dirname "$BUILT")" && ln -s "$ROOT" "$BUILT"
cd "$ROOT" || exit 1
T0=$(date +%s)
S=$OUT/summary.txt
t() { echo "$1 rc=$2 t=$(( $(date +%s) - T0 ))s" | tee -a "$S"; }
left() { [ $(( $(date +%s) - T0 )) -lt "$1" ]; }
ck() {
    local name=$1 to=$2; shift 2
    echo "==== $name" >> "$T"
    (cd tests && env CK_REPORT=1 "$@" timeout "$to" "$B/check_cuda_backend") >> "$T" 2>&1
    t "test_$name" $?
}
pack_logs() { tar czf "$OUT/logs.tgz" -C "$LG" . 2>/dev/null; }
trap pack_logs EXIT
