#!/usr/bin/env bash
# Render `otplug report` pages in headless Chromium and save full-page screenshots, to look at them.
#
#   benchmarks/screenshot_report.sh [FOLDER ...]
#
# With no FOLDER, writes the synthetic run/study folders of tests/test_report.py to $OUT/fixtures and shoots:
# a run with everything (OT, plans, embeddings, DTW), a run without OT, and a study. Each FOLDER (a run or a
# study) gets FOLDER/report.html (or $OUT/<name>.html) and $OUT/<name>.png.
# Environment: OUT (default /tmp/otplug_report_shots), WIDTH x HEIGHT of the window (default 1200 x 3000),
# CHROMIUM (default: chromium on PATH; Debian: apt-get install chromium), PYTHON (default .venv/bin/python),
# TSNE=0 to skip t-SNE.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/otplug_report_shots}
WIDTH=${WIDTH:-1200}
HEIGHT=${HEIGHT:-3000}
PYTHON=${PYTHON:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ]; then
  echo "screenshot_report.sh: chromium not found (apt-get install chromium, or set CHROMIUM=...)" >&2
  exit 1
fi
mkdir -p "$OUT"
folders=("$@")
if [ ${#folders[@]} -eq 0 ]; then
  "$PYTHON" tests/test_report.py "$OUT/fixtures" >/dev/null
  folders=("$OUT/fixtures/run_ot" "$OUT/fixtures/run_no_ot" "$OUT/fixtures/study")
fi
extra=()
[ "${TSNE:-1}" = "0" ] && extra+=(--no-tsne)
for f in "${folders[@]}"; do
  name=$(basename "$f")
  page="$OUT/$name.html"
  "$PYTHON" -m otplug report "$f" --out "$page" -q "${extra[@]}" >/dev/null
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --screenshot="$OUT/$name.png" \
    --window-size="$WIDTH,$HEIGHT" "file://$(realpath "$page")" 2>/dev/null
  echo "$OUT/$name.png  <-  $page"
done
