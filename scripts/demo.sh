#!/usr/bin/env bash
# Set up a virtual environment (default .venv, or $VENV) with tfbrain, then run the main
# job on the bundled real sample: prepare -> train (TensorBoard) -> evaluate -> attribute
# -> export -> serve + query. Extra arguments go to `python -m tfbrain.demo`
# (e.g. `bash scripts/demo.sh --epochs 4 --out /tmp/demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . 2>&1 | grep -v "is ignored: it is neither" || true
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$VENV/bin/python" -m tfbrain.demo "$@"
