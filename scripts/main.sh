#!/usr/bin/env bash
# The main job: set up .venv if needed, prepare the flowers photos into TFRecords, and train a
# SqueezeNet classifier on them. Options are passed to `convlab train`, e.g.
#   bash scripts/main.sh                                      # public flowers set (downloads)
#   bash scripts/main.sh --data ../shared/data/flowers128     # a local folder of class subfolders
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
.venv/bin/convlab train squeezenet --data "data/$name-128" --image-size 128 --epochs 5 "${args[@]}"
