#!/usr/bin/env bash
# Every CUDA row in one call on a lent GPU (issue 25): the tests marked `cuda`, then the language-model
# benchmarks at their full (GPU) sizes; each one's summary lines go to one file,
# $OUT/device_check.txt (or bench/device-results/ without $OUT), its whole output beside it.
# Budget: under 8 minutes on one GPU, each step under its own timeout so one slow bench cannot eat the rest.
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

step() {  # name, seconds, command...: run it, keep its log, copy its summary lines
    local name=$1 limit=$2
    shift 2
    local began=$SECONDS
    timeout "$limit" "$@" > "$DIR/$name.log" 2>&1
    local rc=$?
    {
        echo "## $name (exit $rc, $((SECONDS - began)) s)"
        grep -E '^[a-z_]+\.[A-Za-z0-9_.]+: |passed|failed|skipped' "$DIR/$name.log" | tail -n 40
    } >> "$SUMMARY"
}

step tests 100 "$PY" -m pytest -q -o addopts="" -m cuda tests/test_cuda.py
step lm_cost 150 "$PY" bench/lm_cost.py
step lm_memory 90 "$PY" bench/lm_memory.py
step finetune 60 "$PY" bench/finetune.py
step inference 50 "$PY" bench/inference.py
cat "$SUMMARY"
