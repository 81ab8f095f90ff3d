#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make (or reuse) the virtual environment $VENV (default
# .venv) and install tfbrain into it, editable, with the extras in $1 (e.g. "test").
# The versions are the tested set in constraints.txt (pinned for CI's Python 3.11);
# CONSTRAINTS= (empty) resolves from setup.cfg's ranges instead, e.g. on another Python.
set -euo pipefail
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# pip's notes about unreachable extra index folders on this kind of machine are noise
quiet_pip() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
  | { grep -v "is ignored: it is neither" || true; }; return "${PIPESTATUS[0]}"; }
quiet_pip -U pip
CONSTRAINTS="${CONSTRAINTS-constraints.txt}"
quiet_pip -e ".${1:+[$1]}" ${CONSTRAINTS:+-c "$CONSTRAINTS"}
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
