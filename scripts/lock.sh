#!/usr/bin/env bash
# Re-resolve the tested set: a fresh virtual environment from setup.cfg's ranges with every
# extra, frozen into constraints.txt (its comment header kept). torch stays at its locked
# version (it only reads .ckpt files; moving it is a separate decision). Then run .ci/run
# and commit constraints.txt only if it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
grep -i '^torch==' constraints.txt > "$work/torch.txt"
export VENV="$work/venv"
CONSTRAINTS="$work/torch.txt" source scripts/setup_venv.sh test,torch,beam,figures
{ grep '^#' constraints.txt
  "$VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check \
    | sed 's/+cpu$//' | LC_ALL=C sort -f; } > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
"$VENV/bin/python" -m pip check
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages from $VENV; now run: bash .ci/run"
