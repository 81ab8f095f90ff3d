#!/usr/bin/env bash
# Set up a virtual environment (default .venv, or $VENV) with tfbrain, then run the main
# job on the bundled real sample: prepare -> train (TensorBoard) -> evaluate -> attribute
# -> export -> serve + query. Extra arguments go to `python -m tfbrain.demo`
# (e.g. `bash scripts/demo.sh --epochs 4 --out /tmp/demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh ""
exec "$VENV/bin/python" -m tfbrain.demo "$@"
