#!/usr/bin/env bash
# Set up .venv if needed, then lint and run the test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m slow` for the slow checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report test renders HTML in headless Chromium (Debian's package). Install it where we
# can (root with apt); elsewhere that one test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium for the report test ..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium; the browser test will skip"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
