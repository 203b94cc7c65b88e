#!/usr/bin/env bash
# Create .venv in the repo root and install rlcadence with pinned dependencies.
# torch is pinned to the CPU wheel this environment serves from local disk (2.13.0), installed first
# so nothing later pulls a multi-GB CUDA build; a machine with its own torch keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/rlcadence --help >/dev/null
echo "rlcadence installed in $(pwd)/.venv"
