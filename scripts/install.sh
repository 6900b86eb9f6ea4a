#!/usr/bin/env bash
# Create ./.venv (if missing) and install propagate into it, editable, with the test, cluster (Ray), app (web app)
# and fiftyone extras.
# torch: a CPU-only machine with the 2.13.0 CPU wheel on disk gets it from there; elsewhere pip takes torch 2.13.0
# from PyPI (the CUDA build on Linux). Set TORCH_SPEC to choose another (e.g. TORCH_SPEC="torch==2.13.0+cu124").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test,cluster,app,fiftyone]"
