#!/usr/bin/env bash
# Set up everything on a fresh machine, then start the demo on http://127.0.0.1:7860.
#   bash demo/run.sh [cde-rag demo options, e.g. --model PATH --port 7861]
# Set-up (.ci/setup.sh) prints a line per step; the CPU build of torch is installed unless an
# NVIDIA GPU is found (CDE_RAG_TORCH_INDEX chooses another build, see the README's Install).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/.ci/setup.sh" all
echo "Starting the demo: .venv/bin/cde-rag demo $* (loading the model first; Ctrl-C stops it)"
exec "$root/.venv/bin/cde-rag" demo "$@"
