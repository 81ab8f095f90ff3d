#!/usr/bin/env bash
# Set up a virtual environment (default .venv, or $VENV) with tfbrain and its test
# dependencies, then run the test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh --run_large`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import tfbrain, tfrecords_tools, serving" 
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
