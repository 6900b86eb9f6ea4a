#!/usr/bin/env bash
# Install (see scripts/install.sh), lint (ruff, configured in pyproject.toml) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check --quiet . || { echo "ruff check failed (see above): fix the lint first"; exit 1; }
exec .venv/bin/python -m pytest -q "$@"
