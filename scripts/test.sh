#!/usr/bin/env bash
# Set up .venv if needed, then lint and run the test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m slow` for the slow checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
