#!/usr/bin/env bash
# The CPU benchmark suite in one command; prints every table (paste them into BENCHMARKS.md).
#
#   bash benchmarks/run_all.sh [PHOTOS] [--long] [--quick]
#
# --quick: one round and a few steps of everything, no simulated latency (6 minutes
# here): checks that the suite runs; its numbers are too rough to report.
#
# PHOTOS defaults to ../shared/data/flower_photos. About 45 minutes on a 2-core CPU (the sum of
# its parts, each timed alone; the whole script was not run in one go); --long adds
# the time-to-accuracy runs (codelab baseline and convlab, 35 epochs each, and the improved
# squeezenet-plus recipe: about 1.5 hours more).
# Run it on an otherwise idle machine: the variants are alternated, but other work still
# skews them. The GPU checks are separate: benchmarks/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PHOTOS=../shared/data/flower_photos
LONG=0
ROUNDS=3 STEPS=20 LATENCY=0,20,50
for arg in "$@"; do
  case "$arg" in
    --long) LONG=1 ;;
    --quick) ROUNDS=1 STEPS=4 LATENCY=0 ;;
    *) PHOTOS=$arg ;;
  esac
done
echo "## $(date -u +%F) $(uname -m), $(nproc) cores; photos: $PHOTOS"
run() { echo; echo "### $*"; "$PY" "$@" 2> /dev/null; }
run benchmarks/data_pipeline.py "$PHOTOS" --rounds "$ROUNDS" --latency-ms "$LATENCY"
run benchmarks/vs_codelab.py "$PHOTOS" --rounds "$ROUNDS" --steps "$STEPS"
run benchmarks/train_throughput.py "$PHOTOS" --model efficientnet_lite0 --rounds "$ROUNDS" \
  --steps "$STEPS"
for model in squeezenet convnet efficientnet_lite0; do
  for precision in float32 mixed_bfloat16; do
    run benchmarks/profile_step.py --model "$model" --precision "$precision" --top 8 \
      --steps "$((STEPS / 2))"
  done
done
run benchmarks/recipe_table.py "$PHOTOS" --steps "$((STEPS / 2))"
run benchmarks/pretrained_check.py
if [ "$LONG" = 1 ]; then
  run benchmarks/time_to_accuracy.py "$PHOTOS" --epochs 35
  run benchmarks/time_to_accuracy.py "$PHOTOS" --skip-baseline --recipe squeezenet-plus \
    --thresholds 0.5,0.6,0.655,0.7,0.75,0.8,0.85 -- --image-size 64 --epochs 50
fi
