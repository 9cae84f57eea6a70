#!/usr/bin/env bash
# GPU checks for issues 5 and 6, in one short run (about 10 minutes on one modern GPU).
#
#   bash benchmarks/gpu_check.sh [PHOTO_FOLDER] [RESULTS_DIR]
#
# Needs convlab installed with a GPU build of TensorFlow (`pip install -e .` pulls
# tensorflow, which includes CUDA support on Linux x86-64). PHOTO_FOLDER defaults to
# ../shared/data/flower_photos, or synthetic images when that is missing. Writes
# RESULTS_DIR/gpu_check.md (default: $OUT, else gpu-results/) with one line per measurement:
#  - issue 5: squeezenet and efficientnet-lite0 at 192 px, images/s with and without mixed
#    precision; the Xception fine-tune (codelab-xception) step time at 331 px;
#  - issue 6: a recipe with the auto-chosen strategy and precision, and `convlab launch` with
#    2 workers sharing the GPU (memory growth on, so both fit).
# A quick try of the script itself on a CPU:
#   SIZE=32 XCEPTION_SIZE=71 EPOCHS=1 BATCH=16 bash benchmarks/gpu_check.sh synthetic /tmp/gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${1:-../shared/data/flower_photos}
RESULTS=${2:-${OUT:-gpu-results}}
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
REPORT="$RESULTS/gpu_check.md"
PY=${PYTHON:-python3}
SIZE=${SIZE:-192}
XCEPTION_SIZE=${XCEPTION_SIZE:-331}
EPOCHS=${EPOCHS:-3}
BATCH=${BATCH:-128}
convlab() { "$PY" -m convlab "$@"; }
[ -d "$PHOTOS" ] || [ "$PHOTOS" = flowers ] || PHOTOS=synthetic

{
  echo "# GPU check, $(date -u +%F)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, tf.config.list_physical_devices('GPU'))"
  echo "data: $PHOTOS"
} | tee "$REPORT"

for size in "$SIZE" "$XCEPTION_SIZE"; do
  convlab data prepare "$PHOTOS" "$WORK/data-$size" --size "$size" > /dev/null
done

# One line from a run's summary.json.
summarize() {
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
run = sorted(Path(sys.argv[1]).iterdir())[-1]
s = json.loads((run / "summary.json").read_text())
batch = json.loads((run / "config.json").read_text())["derived"]["global_batch"]
rate = s["train_images_per_second"]
print(f"| {sys.argv[2]} | {s['strategy']} | {s['precision']} | {rate:.0f} img/s, "
      f"{1000 * batch / rate:.0f} ms/step of {batch} | "
      f"{s['best'].get('val_accuracy', 0):.3f} | {s['wall_seconds']:.0f} s |")
EOF
}

echo "| run | strategy | precision | training speed (steady) | best val acc | wall |" | tee -a "$REPORT"
echo "| --- | --- | --- | --- | --- | --- |" | tee -a "$REPORT"
for model in squeezenet efficientnet_lite0; do
  for precision in float32 auto; do
    convlab train "$model" --data "$WORK/data-$SIZE" --image-size "$SIZE" --epochs "$EPOCHS" \
      --batch-size "$BATCH" --precision "$precision" --runs-dir "$WORK/runs-$model-$precision" \
      --quiet --no-report > "$WORK/log-$model-$precision.txt" 2>&1
    summarize "$WORK/runs-$model-$precision" "$model $SIZE px, batch $BATCH, --precision $precision" \
      | tee -a "$REPORT"
  done
done

# Xception fine-tuning, the codelab's last exercise: all layers trainable, 331 px. Weights
# are downloaded by Keras when online; offline the step time is the same with --weights none.
weights=imagenet
"$PY" -c "import urllib.request; urllib.request.urlopen('https://storage.googleapis.com', timeout=5)" \
  2> /dev/null || weights=none
convlab train codelab-xception --data "$WORK/data-$XCEPTION_SIZE" \
  --image-size "$XCEPTION_SIZE" --epochs "$EPOCHS" --weights "$weights" \
  --runs-dir "$WORK/runs-xception" --quiet --no-report > "$WORK/log-xception.txt" 2>&1
summarize "$WORK/runs-xception" "codelab-xception $XCEPTION_SIZE px (weights: $weights)" | tee -a "$REPORT"

# Issue 6: the auto-chosen strategy and precision, then two workers sharing the GPU.
convlab train efficientnet-lite0-transfer --data "$WORK/data-$SIZE" --image-size "$SIZE" \
  --epochs "$EPOCHS" --runs-dir "$WORK/runs-auto" --quiet --no-report > "$WORK/log-auto.txt" 2>&1
summarize "$WORK/runs-auto" "efficientnet-lite0-transfer, all auto" | tee -a "$REPORT"
TF_FORCE_GPU_ALLOW_GROWTH=true convlab launch --workers 2 -- train squeezenet \
  --data "$WORK/data-$SIZE" --image-size "$SIZE" --epochs "$EPOCHS" --batch-size "$BATCH" \
  --runs-dir "$WORK/runs-launch" --quiet --no-report > "$WORK/log-launch.txt" 2>&1
summarize "$WORK/runs-launch" "convlab launch --workers 2 (squeezenet, one GPU shared)" \
  | tee -a "$REPORT"
grep "^launch:" "$WORK/log-launch.txt" | tee -a "$REPORT"
cp "$WORK/log-launch.txt" "$WORK/log-xception.txt" "$RESULTS"/ 2> /dev/null || true
