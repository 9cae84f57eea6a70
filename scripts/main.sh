#!/usr/bin/env bash
# The main job: set up .venv if needed, prepare the flowers photos into TFRecords at the
# recipe's resolution, and train the efficientnet-lite0-transfer recipe on them (ImageNet
# weights that work offline), then evaluate it and write runs/<time>-<name>/report.html.
# Options are passed to `convlab train`, e.g.
#   bash scripts/main.sh                                         # public flowers set (downloads)
#   bash scripts/main.sh --data ../shared/data/flower_photos     # a local folder of class subfolders
#   bash scripts/main.sh --data ../shared/data/flower_photos --epochs 2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
recipe=efficientnet-lite0-transfer
data=flowers
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; shift 2 ;;
    --data=*) data=${1#--data=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
size=$(.venv/bin/python -c "from convlab.config import recipe_config as r; print(r('$recipe').image_size)")
name=$(basename "$data")
.venv/bin/convlab data prepare "$data" "data/$name-$size" --size "$size"
.venv/bin/convlab train "$recipe" --data "data/$name-$size" "${args[@]}"
