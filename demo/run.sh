#!/usr/bin/env bash
# Set up everything on a fresh machine, then start the demo on http://127.0.0.1:7860.
#   bash demo/run.sh [cde-rag demo options, e.g. --model PATH --port 7861]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/.ci/setup.sh" all
exec "$root/.venv/bin/cde-rag" demo "$@"
