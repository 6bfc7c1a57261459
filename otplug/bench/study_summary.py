"""A study's numbers at the level of the training seed (SPEC §8.1), from its rows; every interval from
:mod:`otplug.stats`.

* ``cells`` — per method x domain x region: the mean over training seeds of the success rate with a t interval
  (the result), the per-seed rates, and the pooled Wilson interval (one policy's *episode noise*, nothing more).
* ``comparisons`` — per method against co-training (the baseline every alignment method must beat), per domain and
  region: the paired per-seed difference (the same training seed draws the same BC rows) with its t interval,
  p-value and the smallest difference these seeds detect with 80% power; a hierarchical bootstrap (seeds, then
  episodes) as a check. ``separated`` is the only word for "the paired seed-level interval excludes 0".
* ``gaps`` — per method and region, sim − real success paired per seed: the room alignment has to win back; and
  for each alignment method the part of co-training's gap it closes (:func:`otplug.stats.gap_closed`).
* ``ends`` — per method x domain x region: the mean over training seeds of the fraction of episodes that ended on
  the other region's side of the goal (the policy took the agent to the wrong part of the table; with a t
  interval), from the cells that recorded it.
* ``signals`` — per region, Spearman's rho between each offline signal (:mod:`otplug.bench.study_offline`) and
  real-domain success over every run of the study, with a bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from otplug import stats
from otplug.bench.study_offline import OFFLINE_SIGNALS

__all__ = ["ALIGNMENT_METHODS", "BASELINE", "summarize"]

BASELINE = "cotrain"
#: methods that add an alignment loss to co-training (their gap is compared with co-training's)
ALIGNMENT_METHODS = ("cotrain-mmd", "cotrain-mmd-linear", "cotrain-ot", "cotrain-ot-plain", "cotrain-ot-noprior",
                     "cotrain-ot-l2", "cotrain-ot-pool", "cotrain-mmd-pool", "cotrain-ot-joint-pool")


def _by_seed(rows: Sequence[Mapping[str, Any]], method: str, domain: str, region: str) -> dict[int, Mapping[str, Any]]:
    return {int(r["seed"]): r for r in rows if (r["method"], r["domain"], r["region"]) == (method, domain, region)}


def _rates(cell: Mapping[int, Mapping[str, Any]]) -> dict[int, float]:
    return {s: r["successes"] / r["episodes"] for s, r in sorted(cell.items())}


def _counts(cell: Mapping[int, Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    return {s: (int(r["successes"]), int(r["episodes"])) for s, r in sorted(cell.items())}


def _ends(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], domains: Sequence[str],
          regions: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for m in methods:
        for d in domains:
            for g in regions:
                cell = {s: r for s, r in _by_seed(rows, m, d, g).items() if r.get("ended_other_side") is not None}
                if not cell:
                    continue
                rates = {s: r["ended_other_side"] / r["episodes"] for s, r in sorted(cell.items())}
                out.append({"method": m, "domain": d, "region": g, "seeds": len(rates),
                            "other_side": stats.seed_mean(list(rates.values())).to_dict()})
    return out


def summarize(rows: Sequence[Mapping[str, Any]], offline: Mapping[tuple[str, int], Mapping[str, Any]] | None = None, *,
              methods: Sequence[str], domains: Sequence[str], regions: Sequence[str], n_boot: int = 10_000,
              seed: int = 0) -> dict[str, Any]:
    """The summary of a study's rows (``method``, ``seed``, ``domain``, ``region``, ``episodes``, ``successes``);
    ``offline``: ``(method, seed) -> {signal: value}``. JSON-safe. Rows of several studies (splits, scene ranges,
    steps, data) are refused (:func:`otplug.bench.study_provenance.check_one_study`)."""
    from otplug.bench.study_provenance import check_one_study

    check_one_study(rows)
    cells, comparisons, gaps, closes = [], [], [], []
    for m in methods:
        for d in domains:
            for g in regions:
                cell = _by_seed(rows, m, d, g)
                if not cell:
                    continue
                rates = _rates(cell)
                s = sum(r["successes"] for r in cell.values())
                n = sum(r["episodes"] for r in cell.values())
                sm = stats.seed_mean(list(rates.values()))
                cells.append({"method": m, "domain": d, "region": g, "seeds": sm.n, "episodes": n, "successes": s,
                              "mean": sm.mean, "sd": sm.sd, "ci95": list(sm.ci95) if sm.ci95 else None,
                              "per_seed": {str(k): v for k, v in rates.items()},
                              "episode_noise_wilson95": list(stats.wilson_interval(s, n)),
                              "pooled_rate": s / n})
                base = _by_seed(rows, BASELINE, d, g)
                if m != BASELINE and base and set(base) & set(cell):
                    diff = stats.paired_difference(rates, _rates(base))
                    boot = stats.hierarchical_bootstrap(_counts(cell), _counts(base), n_boot=n_boot, seed=seed)
                    comparisons.append({"method": m, "against": BASELINE, "domain": d, "region": g,
                                        "paired": diff.to_dict(), "hierarchical_bootstrap": boot.to_dict()})
    if "sim" in domains and "real" in domains:
        for m in methods:
            for g in regions:
                sim, real = _by_seed(rows, m, "sim", g), _by_seed(rows, m, "real", g)
                if not sim or not real or not set(sim) & set(real):
                    continue
                gaps.append({"method": m, "region": g, "gap": stats.gap(_rates(sim), _rates(real)).to_dict()})
                if m in ALIGNMENT_METHODS:
                    bs, br = _by_seed(rows, BASELINE, "sim", g), _by_seed(rows, BASELINE, "real", g)
                    if bs and br and set(bs) & set(br) & set(sim) & set(real):
                        gc = stats.gap_closed(_rates(sim), _rates(real), _rates(bs), _rates(br), n_boot=n_boot,
                                              seed=seed)
                        closes.append({"method": m, "against": BASELINE, "region": g, **gc.to_dict()})
    signals = []
    if offline:
        for g in regions:
            real = {(r["method"], int(r["seed"])): r["successes"] / r["episodes"] for r in rows
                    if r["domain"] == "real" and r["region"] == g}
            for name in OFFLINE_SIGNALS:
                pairs = [(offline[k][name], v) for k, v in sorted(real.items())
                         if k in offline and offline[k].get(name) is not None]
                if not pairs:
                    continue
                rc = stats.rank_correlation([p[0] for p in pairs], [p[1] for p in pairs], seed=seed)
                signals.append({"signal": name, "region": g, "runs": len(pairs), **rc.to_dict()})
    return {"cells": cells, "comparisons": comparisons, "gaps": gaps, "gap_closed": closes, "signals": signals,
            "ends": _ends(rows, methods, domains, regions)}
