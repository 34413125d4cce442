#!/usr/bin/env bash
# Set up a fresh machine for cde-rag: a virtualenv in .venv with torch and cde-rag[EXTRAS].
#   bash .ci/setup.sh [EXTRAS]        EXTRAS defaults to "dev" (everything, tests included)
# torch is installed first, on its own, so pip never pulls a multi-GB CUDA build by accident:
#   - a torch wheel already on this machine (pip's find-links) is used as is;
#   - else, without an NVIDIA GPU (no working nvidia-smi): the CPU build, from the CPU index;
#   - else (NVIDIA GPU): PyPI's default Linux build, which is the CUDA one.
# Override with:
#   CDE_RAG_TORCH="torch==2.13.0"                                 (the version; the default)
#   CDE_RAG_TORCH_INDEX=https://download.pytorch.org/whl/cu128     (a given CUDA build)
#   CDE_RAG_TORCH_INDEX=https://download.pytorch.org/whl/cpu       (CPU, even with a GPU)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-dev}
python=${PYTHON:-python3}
venv="$root/.venv"
torch_spec=${CDE_RAG_TORCH:-torch==2.13.0}
cpu_index=https://download.pytorch.org/whl/cpu
steps=4
started=$SECONDS

step() { # step N "what it does"
  echo "[$1/$steps] $2 ($((SECONDS - started)) s so far)"
}

# pip with its own progress (downloads, builds), less the lines that only say nothing changed.
pip_install() {
  local status
  set +e
  "$venv/bin/python" -m pip --disable-pip-version-check install "$@" 2>&1 |
    grep --line-buffered -v -e "^Requirement already satisfied" -e "is ignored"
  status=${PIPESTATUS[0]}
  set -e
  return "$status"
}

installed() { # installed MODULE: is it importable, without importing it
  "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"
}

if [ ! -x "$venv/bin/python" ]; then
  step 1 "Creating the virtualenv $venv"
  "$python" -m venv "$venv"
else
  step 1 "Using the virtualenv $venv"
fi
pip_install -q --upgrade pip

if installed torch; then
  step 2 "torch is already installed: $("$venv/bin/python" -m pip show torch | sed -n 's/^Version: //p')"
elif [ -n "${CDE_RAG_TORCH_INDEX:-}" ]; then
  step 2 "Installing $torch_spec from $CDE_RAG_TORCH_INDEX"
  pip_install "$torch_spec" --index-url "$CDE_RAG_TORCH_INDEX"
elif "$venv/bin/python" -m pip install -q --dry-run --no-index --no-deps "$torch_spec" >/dev/null 2>&1; then
  step 2 "Installing $torch_spec from a wheel already on this machine (pip's find-links)"
  pip_install "$torch_spec"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  step 2 "NVIDIA GPU found: installing $torch_spec, CUDA build, from PyPI (a few GB)"
  pip_install "$torch_spec"
else
  step 2 "No NVIDIA GPU found: installing $torch_spec, CPU build, from $cpu_index"
  pip_install "$torch_spec" --index-url "$cpu_index"
fi

step 3 "Installing cde-rag[$extras] and its dependencies (a few minutes the first time)"
pip_install -e "$root[$extras]"

step 4 "Checking that torch and cde-rag import"
"$venv/bin/python" -c "import torch, cde_rag; print(f'torch {torch.__version__}, cde-rag {cde_rag.__version__}')"

bin=${venv#"$PWD/"}/bin
echo "cde-rag is set up in $venv ($((SECONDS - started)) s). Run it with"
echo "  $bin/cde-rag --help"
echo "or activate the virtualenv first: source $bin/activate && cde-rag --help"
