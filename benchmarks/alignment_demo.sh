#!/bin/bash
# The embedding-alignment demo without the diagonal prior, one run per OT config in benchmarks/alignment_configs/
# and training seed (docs/math.md §7.6). Each run: `otplug train --demo` (small ACT, 150 steps, CPU, one thread)
# and its summary.md (partner retrieval, rank, distance ratio, embedding scale of 64 real frames vs their DTW
# partners). Per seed, the first config also trains the baseline (same rows and seed, no OT loss). ~3.5 min per
# training on one core. `python benchmarks/alignment_summary.py OUT_DIR` tabulates the runs over seeds.
# Usage: [SEEDS="1000 1001 1002"] bash benchmarks/alignment_demo.sh OUT_DIR [config names...]
# (run two invocations with different SEEDS side by side on a 2-core machine; they share nothing but OUT_DIR)
set -euo pipefail
out=${1:?usage: alignment_demo.sh OUT_DIR [config ...]}; shift || true
here=$(cd "$(dirname "$0")" && pwd)
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(plain l2 plain_anchor l2_anchor l2_tn l2_tn_anchor l2_tn_anchor_var)
read -r -a seeds <<< "${SEEDS:-1000}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
py=${PYTHON:-$here/../.venv/bin/python}
for s in "${seeds[@]}"; do
  first=1
  for c in "${configs[@]}"; do
    extra=(); [ $first -eq 1 ] || extra=(--no-baseline); first=0
    dir="$out/$c"; [ ${#seeds[@]} -eq 1 ] && [ "$s" = 1000 ] || dir="$out/seed$s/$c"
    mkdir -p "$(dirname "$dir")"
    "$py" -m otplug train --demo "${extra[@]}" --output-dir "$dir" --ot.config="$here/alignment_configs/$c.json" \
      --seed="$s" > "$dir.log" 2>&1
    echo "== $c seed $s"; grep -A5 '^| policy' "$dir/summary.md"
  done
done
