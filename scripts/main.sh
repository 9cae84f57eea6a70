#!/usr/bin/env bash
# The main job: set up .venv if needed, then the one command for any folder of photos,
# `convlab train --data D` with no model: it looks at the photos, prepares them (cached),
# times the pretrained backbone on this machine and trains within the time budget (20 min
# by default; frozen EfficientNet-Lite0, then fine-tuned as far as the budget allows), then
# evaluates the run (and a given test split) and writes runs/<time>-auto/report.html.
# Options are passed to `convlab train`, e.g.
#   bash scripts/main.sh                                         # public flowers set (downloads)
#   bash scripts/main.sh --data ../shared/data/flower_photos     # a folder of class subfolders
#   bash scripts/main.sh --data ../shared/data/clothing-small    # train/ validation/ test/ inside
#   bash scripts/main.sh --data ../shared/data/flower_photos --budget-minutes 8
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
has_data=no
for arg in "$@"; do
  case "$arg" in --data|--data=*) has_data=yes ;; esac
done
if [ "$has_data" = no ]; then
  set -- --data flowers "$@"
fi
.venv/bin/convlab train "$@"
