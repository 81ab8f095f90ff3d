#!/usr/bin/env bash
# Set up a virtual environment (default .venv, or $VENV) with tfbrain and its test
# dependencies, then run the test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh --run_large`). $EXTRAS adds extras (e.g. EXTRAS=test,torch).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh "${EXTRAS:-test}"
"$VENV/bin/python" -c "import tfbrain, tfrecords_tools, serving"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
