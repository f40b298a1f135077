#!/usr/bin/env bash
# Every CUDA row in one call on a lent GPU (issues 25, 31, 39): bench/gpu_step.py first (lpa's step beside
# transformers' and the hand-written all-depth loss, in bf16 autocast at issue 31's shapes; lpa's E2E
# compiled too on the first shape), the tests marked `cuda` (among them the precision matrix's CUDA
# slice: bf16, and fp16 with the loss scaled), then lm_memory, finetune and inference; each one's summary lines go to one file,
# $OUT/device_check.txt (or bench/device-results/ without $OUT), its whole output beside it.
# Budget: 9 minutes in all. Each step has its own timeout, from the times measured on the first run
# (2026-12-04, H200: finetune alone 60-120 s, inference > 130 s at full size, so it runs --quick here),
# and never more than what is left of the 9 minutes, so one slow step cannot eat the rest.
#   bash bench/device_check.sh            (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DIR=${OUT:-bench/device-results}
mkdir -p "$DIR"
SUMMARY="$DIR/device_check.txt"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "device_check: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null))" >&2
    exit 3
fi
{
    echo "# bench/device_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'torch {torch.__version__}, {p.name}, {p.total_memory / 2**30:.0f} GiB')"
} > "$SUMMARY"

TOTAL=${DEVICE_CHECK_SECONDS:-540}
step() {  # name, seconds, command...: run it (within what is left of TOTAL), keep its log, copy its summary lines
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        echo "## $name (skipped: the ${TOTAL} s budget is spent)" >> "$SUMMARY"
        return
    fi
    local began=$SECONDS
    timeout "$limit" "$@" > "$DIR/$name.log" 2>&1
    local rc=$?
    {
        echo "## $name (exit $rc, $((SECONDS - began)) s of $limit)"
        grep -E '^[a-z_]+\.[A-Za-z0-9_.]+: |^(llama|qwen|ops) |passed|failed|skipped' "$DIR/$name.log" | tail -n 40
    } >> "$SUMMARY"
}

export PYTHONUNBUFFERED=1
step gpu_step 230 "$PY" bench/gpu_step.py --compile
step tests 70 "$PY" -m pytest -q -o addopts="" -m cuda tests/test_cuda.py
step lm_memory 100 "$PY" bench/lm_memory.py
step finetune 110 "$PY" bench/finetune.py
step inference 40 "$PY" bench/inference.py --quick
cat "$SUMMARY"
