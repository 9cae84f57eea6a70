#!/usr/bin/env bash
# The CPU benchmark suite in one command; prints every table (paste them into BENCHMARKS.md).
#
#   bash benchmarks/run_all.sh [PHOTOS] [--long]
#
# PHOTOS defaults to ../shared/data/flowers128. About 25 minutes on a 2-core CPU; --long adds
# the time-to-accuracy runs (codelab baseline and convlab, 35 epochs each: about 1 hour more).
# Run it on an otherwise idle machine: the variants are alternated, but other work still
# skews them. The GPU checks are separate: benchmarks/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PHOTOS=../shared/data/flowers128
LONG=0
for arg in "$@"; do
  case "$arg" in
    --long) LONG=1 ;;
    *) PHOTOS=$arg ;;
  esac
done
echo "## $(date -u +%F) $(uname -m), $(nproc) cores; photos: $PHOTOS"
run() { echo; echo "### $*"; "$PY" "$@" 2> /dev/null; }
run benchmarks/data_pipeline.py "$PHOTOS" --rounds 3
run benchmarks/vs_codelab.py "$PHOTOS" --rounds 3 --steps 20
run benchmarks/train_throughput.py "$PHOTOS" --model efficientnet_lite0 --rounds 2 --steps 20
run benchmarks/recipe_table.py "$PHOTOS" --steps 10
if [ "$LONG" = 1 ]; then
  run benchmarks/time_to_accuracy.py "$PHOTOS" --epochs 35
fi
