#!/usr/bin/env bash
# Install (see scripts/install.sh) and run the main job on the demo clip: masks + overlay.mp4 in demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/propagate demo --out demo_out "$@"
