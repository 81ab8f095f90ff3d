#!/usr/bin/env bash
# Screenshots of a run's TensorBoard as a user sees it: the Time Series (scalars), Images
# and Projector tabs, rendered by headless Chromium (Debian's `chromium` package).
#   bash scripts/tensorboard_screenshots.sh RUN/tensorboard OUT_DIR [PORT]
# Writes OUT_DIR/{scalars,images,projector}.png.
set -euo pipefail
LOGDIR="$1"; OUT="$2"; PORT="${3:-6123}"
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$CHROMIUM" ] || { echo "chromium not found (apt-get install chromium)" >&2; exit 2; }
mkdir -p "$OUT"
"$VENV/bin/tensorboard" --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT" >"$OUT/tensorboard.log" 2>&1 &
TB=$!
trap 'kill $TB 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$PORT/data/runs" >/dev/null 2>&1 && break
  sleep 1
done
shot() {  # name, fragment
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1600,1100 --virtual-time-budget=20000 \
    --screenshot="$OUT/$1.png" "http://127.0.0.1:$PORT/$2" >/dev/null 2>&1
  echo "$OUT/$1.png"
}
shot scalars "?darkMode=false#scalars"
shot images "?darkMode=false#images"
shot projector "?darkMode=false#projector"
