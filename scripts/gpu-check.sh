#!/usr/bin/env bash
# The GPU checks in one call on the lent device machine: the `gpu`-marked tests, then bench/gpu_step.py.
#
#   bash scripts/gpu-check.sh --prepare      # here (has the package registry): wheels the device lacks
#   run: bash scripts/gpu-check.sh           # there, with carry=[".gpu-wheels"]; figures land in $OUT
#
# The device image has torch + CUDA, transformers and pyarrow but not pydantic, and it cannot reach a
# registry, so pydantic's wheels for its Python (3.12) are carried. rlcadence itself is installed there
# from this checkout into a temporary target (no dependencies), so `rlcadence.*` imports as it does here.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
if [[ "${1:-}" == "--prepare" ]]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  .venv/bin/pip download -q -d "$WHEELS" --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
    "pydantic_core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    annotated-types typing-inspection
  ls "$WHEELS"
  exit 0
fi
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
SITE=$(mktemp -d)
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" --target "$SITE" pydantic annotated-types typing-inspection
fi
"$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target "$SITE" . >/dev/null
export PYTHONPATH="$SITE:$PWD"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# --noconftest: the suite's conftest starts Prefect/S3 fixtures the device has no packages for.
"$PY" -m pytest -q --noconftest -p no:cacheprovider -m gpu tests/unit 2>&1 | tee "$OUT/gpu-tests.txt" | tail -25
"$PY" bench/gpu_step.py 2>&1 | tee "$OUT/gpu-step.txt" | tail -30
