#!/usr/bin/env bash
# The CPU benchmark suite in one command; prints every table (paste them into BENCHMARKS.md).
#
#   bash benchmarks/run_all.sh [PHOTOS] [--long]
#
# PHOTOS defaults to ../shared/data/flowers128. About 45 minutes on a 2-core CPU (the sum of
# its parts, each timed alone; the whole script was not run in one go); --long adds
# the time-to-accuracy runs (codelab baseline and convlab, 35 epochs each, and the improved
# squeezenet-plus recipe: about 1.5 hours more).
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
for model in squeezenet convnet efficientnet_lite0; do
  for precision in float32 mixed_bfloat16; do
    run benchmarks/profile_step.py --model "$model" --precision "$precision" --top 8
  done
done
run benchmarks/recipe_table.py "$PHOTOS" --steps 10
run benchmarks/pretrained_check.py
if [ "$LONG" = 1 ]; then
  run benchmarks/time_to_accuracy.py "$PHOTOS" --epochs 35
  run benchmarks/time_to_accuracy.py "$PHOTOS" --skip-baseline --recipe squeezenet-plus \
    --thresholds 0.5,0.6,0.655,0.7,0.75,0.8,0.85 -- --image-size 64 --epochs 50
fi
