#!/usr/bin/env bash
# Set up a fresh machine for cde-rag: a virtualenv in .venv with torch and cde-rag[EXTRAS].
#   bash .ci/setup.sh [EXTRAS]        EXTRAS defaults to "dev" (everything, tests included)
# torch is installed first, on its own, so pip never pulls a multi-GB CUDA build by accident:
#   CDE_RAG_TORCH="torch==2.13.0"                       (default; a CPU build on our machines)
#   CDE_RAG_TORCH_INDEX=https://download.pytorch.org/whl/cpu     (CPU wheels elsewhere)
#   CDE_RAG_TORCH_INDEX=https://download.pytorch.org/whl/cu128   (NVIDIA GPUs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-dev}
python=${PYTHON:-python3}
venv="$root/.venv"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip 2>&1 | grep -v "is ignored" || true
torch_args=("${CDE_RAG_TORCH:-torch==2.13.0}")
if [ -n "${CDE_RAG_TORCH_INDEX:-}" ]; then
  torch_args+=(--index-url "$CDE_RAG_TORCH_INDEX")
fi
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" install "${torch_args[@]}" 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import torch" # fail here, loudly, if torch did not install
"${pip[@]}" install -e "$root[$extras]" 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import cde_rag" # fail loudly if the install did not work
echo "cde-rag is set up in $venv"
