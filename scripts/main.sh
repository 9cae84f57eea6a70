#!/usr/bin/env bash
# The main job: set up .venv if needed, prepare the flowers photos into TFRecords, and train
# a classifier on them: the efficientnet-lite0-transfer recipe (ImageNet weights that work
# offline) at 128 px, then evaluate it and write runs/<time>-<name>/report.html.
# Options are passed to `convlab train`, e.g.
#   bash scripts/main.sh                                      # public flowers set (downloads)
#   bash scripts/main.sh --data ../shared/data/flowers128     # a local folder of class subfolders
#   bash scripts/main.sh --data ../shared/data/flowers128 --epochs 2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data=flowers
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; shift 2 ;;
    --data=*) data=${1#--data=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
name=$(basename "$data")
.venv/bin/convlab data prepare "$data" "data/$name-128" --size 128
.venv/bin/convlab train efficientnet-lite0-transfer --data "data/$name-128" --image-size 128 \
  "${args[@]}"
