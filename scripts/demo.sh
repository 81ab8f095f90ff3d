#!/usr/bin/env bash
# Set up a virtual environment (default .venv, or $VENV) with tfbrain, then run the main
# job on the bundled real sample: prepare -> train (TensorBoard) -> evaluate -> attribute
# -> export -> serve + query. Extra arguments go to `python -m tfbrain.demo`
# (e.g. `bash scripts/demo.sh --epochs 4 --out /tmp/demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
# TensorFlow's native error-level lines (a failed CUDA probe on a machine without a GPU) are
# noise in the demo's output; --debug-level logs come back with TF_CPP_MIN_LOG_LEVEL=0
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
source scripts/setup_venv.sh ""
exec "$VENV/bin/python" -m tfbrain.demo "$@"
