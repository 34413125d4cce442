#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine, then the whole suite.
#   bash tests/run.sh [PYTEST ARGS]      e.g. -m "not slow" for the fast subset
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# The demo's end-to-end test drives Debian's chromium (no browser download).
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
bash .ci/setup.sh dev
exec .venv/bin/python -m pytest "$@"
