#!/usr/bin/env bash
# The GPU check: one command on a fresh GPU machine (torch, triton, nvcc, ninja, pytest; no
# network) that shows the GPU, builds the extension in place, runs the test suite on the GPU, runs
# compute-sanitizer (memcheck) over the fast backends, runs the full benchmark suite, and writes
# everything to OUTDIR - within GPU_CHECK_BUDGET_S seconds (default 470, under 8 minutes).
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Every stage has its own timeout, taken from what is left of the budget minus what the later
# stages need, so one slow stage cannot eat the rest; a stage that fails or times out is recorded
# with its exit code (124: timed out) and the next one runs. The benchmark gets whatever time is
# left (its --time-budget) and writes its CSV row by row, so even a cut run leaves results.
#
# OUTDIR receives at most seven files, flat: gpu_check.log (every stage's output), summary.txt
# (the stage table and the per-op benchmark summary, also printed last), results.csv,
# results.json, table.txt, speedup.png, floor.png. Commit them under
# benchmarks/results/<gpu-name>/ (the summary prints the folder name).
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S, GPU_CHECK_TESTS (pytest targets,
# default "tests"), GPU_CHECK_TEST_WORKERS (pytest-xdist workers when installed, default 4; 0 for
# none), GPU_CHECK_BENCH_ARGS (replaces "--shapes full"), GPU_CHECK_SKIP_BUILD=1.
set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"

PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
TESTS=${GPU_CHECK_TESTS:-tests}
WORKERS=${GPU_CHECK_TEST_WORKERS:-4}
BENCH_ARGS=${GPU_CHECK_BENCH_ARGS:---shapes full}
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.txt
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1
: >"$LOG"
STAGE_LINES=()

log() { echo "$*" | tee -a "$LOG"; }
left() { echo $((DEADLINE - $(date +%s))); }
record() { STAGE_LINES+=("$(printf '%-10s %-8s %6s s  %s' "$1" "$2" "$3" "$4")"); }

# stage NAME CAP RESERVE CMD...: run CMD with a timeout of min(CAP, time left - RESERVE).
stage() {
    local name=$1 cap=$2 reserve=$3
    shift 3
    local avail=$(($(left) - reserve))
    local limit=$((cap < avail ? cap : avail))
    if [ "$limit" -lt 5 ]; then
        log "== $name: skipped, no time left in the budget"
        record "$name" skipped 0 "no time left"
        return 0
    fi
    log ""
    log "== $name (timeout ${limit}s, $(left)s of the budget left): $*"
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    local note=""
    [ "$rc" -eq 124 ] && note="timed out"
    record "$name" "$rc" $(($(date +%s) - t0)) "$note"
    return 0
}

log "vqvae_fast GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${BUDGET}s, python $PY"

# 1. the GPU
if command -v nvidia-smi >/dev/null 2>&1; then
    stage gpu 20 420 nvidia-smi
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
else
    log "== gpu: nvidia-smi not found"
    record gpu missing 0 "nvidia-smi not found"
    GPU_NAME=""
fi
GPU_DIR=$(echo "${GPU_NAME:-unknown-gpu}" | tr ' ' '-' | tr -cd 'A-Za-z0-9._-')

# 2. build the extension in place (no network: no build isolation, no dependencies, no index)
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
    record build skipped 0 "GPU_CHECK_SKIP_BUILD=1"
else
    stage build 200 250 "$PY" -m pip install --no-index --no-build-isolation --no-deps -e .
fi

# 3. what was found: versions, GPU, extension, backend per op
stage info 40 240 "$PY" -m vqvae_fast info

# 4. the test suite on the GPU (CUDA-parametrised tests run; CPU-interpreter ones skip with a reason)
TEST_ARGS=(-q -p no:cacheprovider)
if [ "$WORKERS" != "0" ] && "$PY" -c "import xdist" >/dev/null 2>&1; then
    TEST_ARGS+=(-n "$WORKERS")
fi
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
    TEST_ARGS+=(--timeout 150)
fi
# shellcheck disable=SC2086  # TESTS may name several paths
stage tests 180 160 "$PY" -m pytest $TESTS "${TEST_ARGS[@]}"

# 5. compute-sanitizer memcheck over every fast CUDA backend, small shapes
SANITIZER=$(command -v compute-sanitizer || true)
if [ -z "$SANITIZER" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    SANITIZER=/usr/local/cuda/bin/compute-sanitizer
fi
if [ -n "$SANITIZER" ]; then
    stage sanitizer 100 130 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
        --error-exitcode 99 --print-limit 20 --report-api-errors no \
        "$PY" -m vqvae_fast.benchmarks.sanitize
else
    log "== sanitizer: compute-sanitizer not found, skipped"
    record sanitizer skipped 0 "compute-sanitizer not found"
fi

# 6. the full benchmark suite, with what is left of the budget
BENCH_BUDGET=$(($(left) - 45))
if [ "$BENCH_BUDGET" -ge 30 ]; then
    # shellcheck disable=SC2086  # BENCH_ARGS holds several arguments
    stage bench $((BENCH_BUDGET + 30)) 10 "$PY" -m vqvae_fast bench $BENCH_ARGS --out "$OUT" \
        --time-budget "$BENCH_BUDGET"
    if ! "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get('rows') else 1)" \
        "$OUT/results.json" >/dev/null 2>&1 && [ -s "$OUT/results.csv" ]; then
        log "== bench was cut short: rebuilding JSON, table and plots from results.csv"
        timeout 60 "$PY" -m vqvae_fast.benchmarks.report "$OUT" >>"$LOG" 2>&1
    fi
else
    log "== bench: skipped, ${BENCH_BUDGET}s left"
    record bench skipped 0 "no time left"
fi

# 7. the summary, printed last
{
    echo "vqvae_fast GPU check summary ($(($(date +%s) - START)) s of a ${BUDGET}s budget)"
    echo "gpu: ${GPU_NAME:-none}   results folder: benchmarks/results/${GPU_DIR}/"
    echo "stage      exit     time"
    printf '%s\n' "${STAGE_LINES[@]}"
    echo
    if [ -s "$OUT/results.csv" ]; then
        timeout 60 "$PY" -m vqvae_fast.benchmarks.report "$OUT" --summary-only 2>&1 || echo "(no benchmark summary)"
    else
        echo "(no benchmark results)"
    fi
    echo
    grep -E "([0-9]+ (passed|failed)[ ,].* in [0-9.]+s|^sanitize: [0-9]+ runs|ERROR SUMMARY)" "$LOG" | tail -n 5
} >"$SUMMARY" 2>&1
cat "$SUMMARY" | tee -a "$LOG"
