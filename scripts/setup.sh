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
.venv/bin/python -m pip install -q -e ".[dev,ray]"  # [ray]: runner: ray and its tests
.venv/bin/rlcadence --help >/dev/null
# The UI browser test drives Debian's chromium through Playwright (Playwright's own browser download cannot
# run here). Missing and not installable: under CI, stop naming the fix; elsewhere warn (the main job needs
# no browser; tests/integration/test_ui_browser.py then fails, it never skips). RLCADENCE_NO_BROWSER=1 opts out.
if ! command -v chromium >/dev/null 2>&1 && [ "${RLCADENCE_NO_BROWSER:-0}" != 1 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    command -v chromium >/dev/null 2>&1 || { echo "error: apt-get install chromium did not provide 'chromium'" >&2; exit 1; }
  else
    echo "error: chromium is missing and cannot be installed here (needs apt-get as root):" >&2
    echo "  sudo apt-get install -y chromium, or RLCADENCE_NO_BROWSER=1 bash scripts/setup.sh to skip the UI test's browser" >&2
    if [ "${CI:-}" = true ]; then exit 1; fi
  fi
fi
echo "rlcadence installed in $(pwd)/.venv"
