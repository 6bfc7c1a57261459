#!/bin/bash
# The embedding-alignment demo without the diagonal prior, one run per OT config in benchmarks/alignment_configs/
# (docs/math.md §7.6). Each run: `otplug train --demo` (small ACT, 150 steps, CPU, one thread) and its
# summary.md (partner retrieval, rank, distance ratio, embedding scale of 64 real frames vs their DTW partners).
# The first config also trains the baseline (same rows, no OT loss). ~3.5 min per run on one core.
# Usage: bash benchmarks/alignment_demo.sh OUT_DIR [config names...]
set -euo pipefail
out=${1:?usage: alignment_demo.sh OUT_DIR [config ...]}; shift || true
here=$(cd "$(dirname "$0")" && pwd)
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(plain l2 plain_anchor l2_anchor l2_tn l2_tn_anchor l2_tn_anchor_var)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
py=${PYTHON:-$here/../.venv/bin/python}
first=1
for c in "${configs[@]}"; do
  extra=(); [ $first -eq 1 ] || extra=(--no-baseline); first=0
  "$py" -m otplug train --demo "${extra[@]}" --output-dir "$out/$c" --ot.config="$here/alignment_configs/$c.json" \
    > "$out/$c.log" 2>&1
  echo "== $c"; grep -A5 '^| policy' "$out/$c/summary.md"
done
