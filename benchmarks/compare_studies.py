"""Two study folders of the same design, compared cell by cell, paired by training seed: ``B - A``.

    .venv/bin/python benchmarks/compare_studies.py STUDY_A STUDY_B [--json out.json]

For every (method, domain, region) both studies evaluated, the paired seed-level difference of the success rate
(``otplug.stats.paired_difference``: mean, 95% t interval, p, mdd80, separated) and the hierarchical bootstrap of
the counts. Used for issue #28's decision (the same study trained in bf16 and in float32, on the same seeds, data
and scenes: is bf16 separated below float32 on any cell?) and for a rerun on another machine (issue #30). Both
folders must be one design: the same split, scenes and data (``study.json`` rows are checked; the environment and
the precision may differ -- that is what is compared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rows(folder: Path) -> list[dict]:
    from otplug.bench.study_provenance import check_one_study

    rows = json.loads((folder / "study.json").read_text())
    check_one_study(rows, where=str(folder / "study.json"))
    return rows


def compare(a: Path, b: Path) -> list[dict]:
    from otplug import stats

    ra, rb = _rows(a), _rows(b)
    for key in ("split", "scene_seeds", "steps", "data_hash"):
        va = {json.dumps(r.get(key)) for r in ra if r.get(key) is not None}
        vb = {json.dumps(r.get(key)) for r in rb if r.get(key) is not None}
        if va and vb and va != vb:
            raise SystemExit(f"compare_studies: the two studies differ in {key} ({sorted(va)} vs {sorted(vb)}): "
                             "not one design")
    cells = sorted({(r["method"], r["domain"], r["region"]) for r in ra} & {(r["method"], r["domain"], r["region"])
                                                                         for r in rb})
    out = []
    for m, d, g in cells:
        pick = lambda rows: {r["seed"]: r for r in rows if (r["method"], r["domain"], r["region"]) == (m, d, g)}
        ca, cb = pick(ra), pick(rb)
        rate = lambda c: {s: r["successes"] / r["episodes"] for s, r in c.items()}
        count = lambda c: {s: (r["successes"], r["episodes"]) for s, r in c.items()}
        diff = stats.paired_difference(rate(cb), rate(ca))
        boot = stats.hierarchical_bootstrap(count(cb), count(ca), n_boot=10_000, seed=0)
        out.append({"method": m, "domain": d, "region": g, "a_mean": sum(rate(ca).values()) / len(ca),
                    "b_mean": sum(rate(cb).values()) / len(cb), "paired": diff.to_dict(),
                    "hierarchical_bootstrap": boot.to_dict()})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res = compare(args.a, args.b)
    print(f"B - A, paired by training seed (A = {args.a}, B = {args.b}):")
    print(f"{'method':14s} {'cell':8s} {'A':>6s} {'B':>6s} {'B - A':>7s} {'95% t interval':>18s} {'mdd80':>6s} "
          f"{'bootstrap 95%':>17s} separated")
    for r in res:
        pd, hb = r["paired"], r["hierarchical_bootstrap"]
        ci = pd["ci95"] or [float("nan")] * 2
        print(f"{r['method']:14s} {r['domain'] + ' ' + r['region']:8s} {r['a_mean']:6.2f} {r['b_mean']:6.2f} "
              f"{pd['mean']:+7.2f} ({ci[0]:+.2f}, {ci[1]:+.2f})   {pd['mdd80'] or float('nan'):6.2f} "
              f"({hb['ci95'][0]:+.2f}, {hb['ci95'][1]:+.2f})  {'yes' if pd['separated'] else 'no'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
