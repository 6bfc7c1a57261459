"""Tabulate the alignment demo's runs (benchmarks/alignment_demo.sh) over training seeds.

Usage: python benchmarks/alignment_summary.py OUT_DIR

Reads OUT_DIR/seed*/<config>/summary.json (and OUT_DIR/<config>/summary.json for a single seed-1000 run). Per
seed, the baseline is the no-OT run trained beside the seed's first config. Prints, per config: partner
retrieval (mean over seeds and each seed's value), its ratio to the same seed's baseline, the pooled ratio
(sum of OT hits / sum of baseline hits), mean partner rank, and the embedding scale relative to the baseline and
to the untrained policy (init).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def load(out: Path) -> dict[str, dict[str, dict]]:
    """{seed: {config: embedding_alignment}} with the seed's baseline under the key 'baseline'."""
    runs: dict[str, dict[str, dict]] = {}
    seed_dirs = sorted(out.glob("seed*")) or [out]
    for sd in seed_dirs:
        seed = sd.name.removeprefix("seed") if sd != out else "1000"
        for summary in sorted(sd.glob("*/summary.json")):
            align = json.loads(summary.read_text())["embedding_alignment"]
            runs.setdefault(seed, {})[summary.parent.name] = align["with OT"]
            if "baseline (no OT)" in align:
                runs[seed]["baseline"] = align["baseline (no OT)"]
            runs[seed].setdefault("init", align["init"])
    return runs


def table(runs: dict[str, dict[str, dict]]) -> str:
    configs = sorted({c for r in runs.values() for c in r if c not in ("baseline", "init")})
    seeds = sorted(runs)
    lines = [f"seeds: {', '.join(seeds)}; 64 real frames per run (retrieval 1/64 = 0.016)", "",
             ("| config | retrieval (mean) | per seed | x baseline (per seed) | x baseline (pooled) | rank | "
              "scale / baseline | scale / init |"), "|---|---|---|---|---|---|---|---|"]
    for name in ["baseline", *configs]:
        have = [s for s in seeds if name in runs[s] and "baseline" in runs[s]]
        if not have:
            continue
        r = [runs[s][name]["retrieval"] for s in have]
        b = [runs[s]["baseline"]["retrieval"] for s in have]
        ratios = [x / y if y > 0 else float("inf") for x, y in zip(r, b)]
        scale = [runs[s][name]["scale"] / runs[s]["baseline"]["scale"] for s in have]
        grown = [runs[s][name]["scale"] / runs[s]["init"]["scale"] for s in have]
        lines.append(
            f"| {name} | {statistics.mean(r):.3f} | {', '.join(f'{x:.3f}' for x in r)} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | {sum(r) / sum(b):.2f} | "
            f"{statistics.mean(runs[s][name]['rank'] for s in have):.1f} | "
            f"{', '.join(f'{x:.2f}' for x in scale)} | {', '.join(f'{x:.2f}' for x in grown)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    runs = load(Path(argv[0]))
    if not runs:
        print(f"alignment_summary: no */summary.json under {argv[0]}", file=sys.stderr)
        return 2
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
