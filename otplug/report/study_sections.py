"""The evidence sections of a study page, in the order a sceptical reader needs them (SPEC §8.1): the design (split,
scenes, training seeds), success per training seed, the paired comparisons against co-training with their power, the
sim − real gaps and the gap closed, and which offline signal predicts real success.

Every number is read from study_summary.json (or, for an older study, computed by :mod:`otplug.stats` in
:mod:`otplug.report.data`); the only thing computed here is how many seeds a +0.10 difference would need
(:func:`otplug.stats.seeds_for_difference`)."""

from __future__ import annotations

import math
from typing import Any

from otplug import stats
from otplug.report.data import StudyFolder
from otplug.report.page import Page, esc

__all__ = ["comparisons", "design", "ends", "gaps", "results_table", "signals"]

#: the difference SPEC §8.1 asks every table to say whether it can detect
TARGET_DIFFERENCE = 0.10
LOWER_IS_BETTER = ("domain_probe_acc", "heldout_real_bc_loss", "ot_loss")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _r(v: Any) -> str:
    return f"{v:.2f}" if _num(v) else "–"


def _sg(v: Any) -> str:
    return f"{v:+.2f}" if _num(v) else "–"


def _ci(ci: Any) -> tuple[float, float] | None:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_num(x) for x in ci):
        return float(ci[0]), float(ci[1])
    return None


def _iv(ci: Any, signed: bool = False, none: str = "–") -> str:
    c = _ci(ci)
    if c is None:
        return none
    f = _sg if signed else _r
    return f"{f(c[0])} to {f(c[1])}"


def _p(v: Any) -> str:
    if not _num(v):
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _b(text: str) -> tuple[str, str]:
    return ("html", f"<b>{esc(text)}</b>")


def _excludes_zero(ci: Any) -> bool:
    c = _ci(ci)
    return c is not None and (c[0] > 0 or c[1] < 0)


def _orders(st: StudyFolder) -> tuple[dict[str, int], dict[str, int]]:
    cfg = st.config or {}
    methods = cfg.get("methods") if isinstance(cfg.get("methods"), list) else []
    domains = cfg.get("eval_domains") if isinstance(cfg.get("eval_domains"), list) else ["real", "sim"]
    return ({m: i for i, m in enumerate(methods)}, {d: i for i, d in enumerate(domains)})


def _seed_word(n: Any) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------------------------------------------
# the design


def design(page: Page, st: StudyFolder) -> None:
    page.section("study", "Study")
    d, cfg, summ = st.design(), st.config or {}, st.summary or {}
    sc, seeds, n = d["scene_seeds"], d["training_seeds"], d["n_seeds"]
    if sc and all(isinstance(x, int) for x in sc):
        scenes = f"episode seeds {sc[0]}..{sc[1] - 1} ({sc[1] - sc[0]} scenes), the same for every method and seed"
    else:
        scenes = "not recorded"
    items: list[tuple[str, Any]] = [
        ("split", d["split"] or "not recorded (a study from before the dev/test splits)"),
        ("evaluation scenes", scenes),
        ("training seeds", f"{', '.join(map(str, seeds))} ({len(seeds)})" if seeds else
         (f"{n} (which ones: not recorded)" if n else "not recorded")),
        ("methods", ", ".join(map(str, cfg["methods"])) if isinstance(cfg.get("methods"), list) else None),
        ("episodes per seed and cell", cfg.get("eval_episodes")),
        ("domains x regions", " x ".join(", ".join(map(str, cfg[k])) for k in ("eval_domains", "eval_regions"))
         if all(isinstance(cfg.get(k), list) for k in ("eval_domains", "eval_regions")) else None),
    ]
    if _num(summ.get("minutes")):
        items.append(("measured on", f"{summ.get('device', '?')}, {summ['minutes']:.1f} min"
                      + (f", launcher {summ['launcher']}" if summ.get("launcher") else "")))
    if summ.get("precision"):
        items.append(("training precision", summ["precision"]))
    if isinstance(summ.get("data_hashes"), dict):
        items.append(("data (content hash)", f"{summ.get('data_hash', '?')}: " + ", ".join(
            f"{k} {str(v)[:12]}" for k, v in summ["data_hashes"].items())))
    env = summ.get("environment")
    if isinstance(env, dict):
        pk = env.get("packages") if isinstance(env.get("packages"), dict) else {}
        items.append(("environment", f"{summ.get('environment_key', '?')}: {env.get('cpu', '?')}, "
                      f"{env.get('cpu_capability', '?')}; " + ", ".join(f"{k} {v}" for k, v in pk.items() if v)))
    if isinstance(summ.get("run_environments"), dict):
        items.append(("runs by environment", ", ".join(f"{k}: {v}" for k, v in summ["run_environments"].items())))
    page.kv([(k, v) for k, v in items if v is not None])
    if isinstance(summ.get("environments_note"), str):
        page.warn(summ["environments_note"])
    if n == 1:
        page.warn("One seed is not evidence; numbers vary by machine. A training seed fixes the data, not the policy "
                  "(floating point differs between machines): this page shows the pipeline, not an effect.")
    if d["split"] == "dev":
        page.p("dev split: the scenes and seeds every choice (config, lambda, steps, the recommended method) is made "
               "on. The final table is the test split, run once per set of choices.", "note")
    elif d["split"] == "test":
        page.p("test split: scenes and training seeds that no choice saw.", "note")
    if not st.seed_level and (st.summary is not None or st.table):
        page.missing("This study's summary is in an older format (before SPEC §8.1): the success table below is "
                     "recomputed per training seed from "
                     + ("study.json" if st.table else "the summary's per-seed rates")
                     + "; the paired comparisons, the sim − real gaps and the offline signals were not recorded.")
    if st.config:
        page.details("study_config.json", Page.table_html(
            ["setting", "value"], [[k, ", ".join(map(str, v)) if isinstance(v, list) else v]
                                   for k, v in st.config.items()], "kv"))


# ---------------------------------------------------------------------------------------------------------------------
# success per training seed


def _dots(cell: dict[str, Any]) -> tuple[str, str]:
    """An inline SVG on [0, 1]: the t interval (bar), the mean (tick) and one dot per seed."""
    w, h, pad = 140, 16, 4

    def x(v: float) -> float:
        return pad + max(0.0, min(1.0, v)) * (w - 2 * pad)

    parts = [f'<line x1="{pad}" y1="{h / 2}" x2="{w - pad}" y2="{h / 2}" stroke="#ccd" stroke-width="1"/>']
    ci = _ci(cell.get("ci95"))
    if ci:
        parts.append(f'<rect x="{x(ci[0]):.1f}" y="{h / 2 - 3}" width="{max(1.0, x(ci[1]) - x(ci[0])):.1f}" '
                     'height="6" fill="#9db4e0"/>')
    if _num(cell.get("mean")):
        parts.append(f'<line x1="{x(cell["mean"]):.1f}" y1="1" x2="{x(cell["mean"]):.1f}" y2="{h - 1}" '
                     'stroke="#1d3f8f" stroke-width="2"/>')
    per = cell.get("per_seed")
    for v in (per.values() if isinstance(per, dict) else per if isinstance(per, list) else []):
        if _num(v):
            parts.append(f'<circle cx="{x(v):.1f}" cy="{h / 2}" r="2.6" fill="#000" fill-opacity="0.55"/>')
    return ("html", f'<svg width="{w}" height="{h}" role="img" aria-label="per-seed rates">{"".join(parts)}</svg>')


def _per_seed(per: Any) -> str:
    if isinstance(per, dict):
        return ", ".join(f"{k}: {_r(v)}" for k, v in per.items())
    if isinstance(per, list):
        return ", ".join(_r(v) for v in per)
    return "–"


def results_table(page: Page, st: StudyFolder, cells: list[dict[str, Any]]) -> None:
    src = st.cells_source()
    page.p("Each row: the mean over training seeds of the success rate (the result), its 95% t interval over seeds "
           "(n − 1 degrees of freedom; none with one seed), the seed-to-seed sd and each seed's rate (the picture: "
           "interval as a bar, mean as a tick, one dot per seed, on 0 to 1). The pooled Wilson interval is episode "
           "noise only — how far one policy's rate moves with other evaluation episodes — and says nothing about "
           "another training seed." + ("" if src == "study_summary.json" else f" Computed from {src}."), "note")
    morder, dorder = _orders(st)
    cells = sorted(cells, key=lambda c: (dorder.get(c.get("domain"), len(dorder)), str(c.get("domain")),
                                         str(c.get("region")), morder.get(c.get("method"), len(morder)),
                                         str(c.get("method"))))
    rows = []
    for c in cells:
        rows.append([c.get("method"), c.get("domain"), c.get("region"), c.get("seeds"), c.get("episodes"),
                     _b(_r(c.get("mean"))), _iv(c.get("ci95"), none="n/a (1 seed)" if c.get("seeds") == 1 else "–"),
                     _r(c.get("sd")), _dots(c), _per_seed(c.get("per_seed")),
                     _iv(c.get("episode_noise_wilson95"))])
    page.table(["method", "domain", "region", "seeds", "episodes", "mean over seeds", "95% t interval (seeds)",
                "sd", "seeds on 0–1", "per seed", "episode noise only (pooled Wilson 95%)"], rows)


# ---------------------------------------------------------------------------------------------------------------------
# against co-training


def _seeds_for(sd: Any) -> str:
    if not _num(sd) or sd <= 0:
        return "–"
    try:
        return str(stats.seeds_for_difference(float(sd), TARGET_DIFFERENCE))
    except stats.StatsError:
        return "> 100000"


def comparisons(page: Page, st: StudyFolder) -> None:
    page.section("comparisons", "Against co-training, paired by training seed")
    if not st.seed_level:
        page.missing("Not recorded: this study's summary predates the paired seed-level comparisons.")
        return
    comps = st.comparisons()
    if not comps:
        page.missing("No comparisons: the study has no method run beside co-training (cotrain) on common seeds.")
        return
    page.p("Per training seed, method − co-training (the same seed draws the same BC rows), then over the seeds: the "
           "mean difference, its 95% t interval, the paired t test's p, the sd of the differences, mdd80 (the "
           "smallest true difference these seeds detect with 80% power at alpha 0.05), how many seeds a "
           f"+{TARGET_DIFFERENCE:.2f} difference needs at this sd, and a hierarchical bootstrap (seeds, then "
           "episodes) as a check. \"separated\" is written only where the paired t interval excludes 0.", "note")
    morder, dorder = _orders(st)
    comps = sorted(comps, key=lambda c: (dorder.get(c.get("domain"), len(dorder)), str(c.get("domain")),
                                         str(c.get("region")), morder.get(c.get("method"), len(morder))))
    rows, mdds, bad = [], [], []
    for c in comps:
        pd = c.get("paired") if isinstance(c.get("paired"), dict) else {}
        hb = c.get("hierarchical_bootstrap") if isinstance(c.get("hierarchical_bootstrap"), dict) else {}
        n = pd.get("n")
        boot = _iv(hb.get("ci95"), signed=True)
        if hb.get("n_seeds") == 1 and boot != "–":
            boot += " (episodes only)"
        if n == 1 or _ci(pd.get("ci95")) is None:
            verdict: Any = "n/a (1 seed)" if n == 1 else "–"
        elif _excludes_zero(pd.get("ci95")):
            verdict = _b("separated")
            if _ci(hb.get("ci95")) and not _excludes_zero(hb.get("ci95")):
                verdict = ("html", "<b>separated</b> (the bootstrap interval includes 0)")
        else:
            verdict = "no"
        if bool(pd.get("separated")) != _excludes_zero(pd.get("ci95")):
            bad.append(f"{c.get('method')} {c.get('domain')} {c.get('region')}")
        if _num(pd.get("mdd80")):
            mdds.append((float(pd["mdd80"]), c))
        rows.append([c.get("method"), f"{c.get('domain')} {c.get('region')}", n, _b(_sg(pd.get("mean"))),
                     _iv(pd.get("ci95"), signed=True), _p(pd.get("p_value")), _r(pd.get("sd")), _r(pd.get("mdd80")),
                     _seeds_for(pd.get("sd")), boot, verdict])
    page.table(["method", "cell", "seeds", "difference", "95% t interval", "p", "sd", "mdd80",
                f"seeds for +{TARGET_DIFFERENCE:.2f}", "bootstrap 95%", "separated"], rows)
    page.raw(f"<p><b>{esc(_power_sentence(mdds, comps))}</b></p>")
    if bad:
        page.error("study_summary.json: the 'separated' flag disagrees with the paired interval for "
                   + "; ".join(bad) + " (shown from the interval).")


def _power_sentence(mdds: list[tuple[float, dict[str, Any]]], comps: list[dict[str, Any]]) -> str:
    """The smallest difference the seeds could detect (mdd80), per domain (real first), and what that means for
    +0.10 (SPEC §8.1: a table that cannot detect it says so)."""
    if not mdds:
        return ("With one seed per method there is no paired interval: these seeds cannot detect any difference, "
                "and no row is evidence either way.")
    ns = sorted({c["paired"].get("n") for _m, c in mdds})
    domains = sorted({str(c.get("domain")) for _m, c in mdds}, key=lambda d: (d != "real", d))
    parts, blind = [], []
    for d in domains:
        here = [(m, c) for m, c in mdds if str(c.get("domain")) == d]
        lo, lo_c = min(here, key=lambda t: t[0])
        hi, hi_c = max(here, key=lambda t: t[0])
        where = lambda c: f"{c.get('method')} {c.get('region')}"  # noqa: E731
        parts.append(f"in {d}, {lo:.2f} ({where(lo_c)})" if lo == hi else
                     f"in {d}, {lo:.2f} ({where(lo_c)}) to {hi:.2f} ({where(hi_c)})")
        blind += [f"{c.get('method')} {d} {c.get('region')}" for m, c in here if m > TARGET_DIFFERENCE]
    text = (f"The smallest difference these {' / '.join(map(str, ns))} paired seeds could detect with 80% power: "
            + "; ".join(parts) + ". ")
    if len(blind) == len(mdds):
        text += (f"None of these comparisons can detect +{TARGET_DIFFERENCE:.2f}: a row that is not separated is "
                 "not evidence of no effect, only of too few seeds.")
    elif blind:
        text += (f"{len(blind)} of {len(mdds)} cannot detect +{TARGET_DIFFERENCE:.2f} ({', '.join(blind)}): where "
                 "they are not separated, that is too few seeds, not evidence of no effect.")
    else:
        text += f"Every comparison can detect +{TARGET_DIFFERENCE:.2f}."
    return text


# ---------------------------------------------------------------------------------------------------------------------
# the room: sim − real


def gaps(page: Page, st: StudyFolder) -> None:
    page.section("gaps", "Sim − real gap and how much of it alignment closes")
    if not st.seed_level:
        page.missing("Not recorded: this study's summary predates the sim − real gaps.")
        return
    gs = st.gaps()
    if not gs:
        page.missing("Not recorded: the study did not evaluate both domains (sim and real) for any method.")
        return
    page.p("Per training seed, sim − real success of one method in one region, then the mean over seeds with its 95% "
           "t interval: the room alignment has to win back (SPEC §8.1: a task shows what alignment does where "
           "co-training is competent in sim and loses much of it in real).", "note")
    morder, _ = _orders(st)
    gs = sorted(gs, key=lambda g: (str(g.get("region")), morder.get(g.get("method"), len(morder))))
    rows = []
    for g in gs:
        pd = g.get("gap") if isinstance(g.get("gap"), dict) else {}
        rows.append([g.get("method"), g.get("region"), pd.get("n"), _b(_sg(pd.get("mean"))),
                     _iv(pd.get("ci95"), signed=True, none="n/a (1 seed)" if pd.get("n") == 1 else "–"),
                     "n/a (1 seed)" if pd.get("n") == 1 else "yes" if _excludes_zero(pd.get("ci95")) else "no"])
    page.table(["method", "region", "seeds", "sim − real", "95% t interval", "interval excludes 0"], rows)
    closed = st.gap_closed()
    page.h3("Gap closed against co-training")
    if not closed:
        page.missing("Not recorded: no alignment method ran beside co-training in both domains.")
        return
    page.p("Per seed, co-training's gap − the method's gap (positive: the method closes part of the gap), with its "
           "95% t interval; the fraction of co-training's gap closed with a paired seed bootstrap interval (none "
           "when co-training has no gap to close).", "note")
    rows = []
    for g in sorted(closed, key=lambda g: (str(g.get("region")), morder.get(g.get("method"), len(morder)))):
        pd = g.get("closed") if isinstance(g.get("closed"), dict) else {}
        frac_ci = _iv(g.get("fraction_ci95"), signed=True)
        rows.append([g.get("method"), g.get("region"), g.get("n", pd.get("n")), _sg(g.get("gap_cotrain")),
                     _sg(g.get("gap_method")), _b(_sg(pd.get("mean"))), _iv(pd.get("ci95"), signed=True),
                     _r(g.get("fraction")),
                     frac_ci if frac_ci != "–" else (g.get("fraction_reason") or "–")])
    page.table(["method", "region", "seeds", "co-training gap", "method gap", "closed", "95% t interval",
                "fraction closed", "fraction 95% bootstrap"], rows)


def ends(page: Page, st: StudyFolder) -> None:
    page.section("ends", "Where the episodes end")
    es = st.ends() if st.seed_level else []
    if not es:
        page.missing("Not recorded: this study's evaluations predate where the episodes end.")
        return
    page.p("The fraction of episodes whose agent ended on the other region's side of the goal (mean over training "
           "seeds, 95% t interval): the policy took it to the wrong part of the table, not merely short of the goal. "
           "An alignment that maps the real frames of B onto region A shows here (docs/benchmark.md, fourth round).",
           "note")
    morder, _ = _orders(st)
    rows = []
    for e in sorted(es, key=lambda e: (morder.get(e.get("method"), len(morder)), str(e.get("domain")),
                                       str(e.get("region")))):
        sm = e.get("other_side") if isinstance(e.get("other_side"), dict) else {}
        rows.append([e.get("method"), e.get("domain"), e.get("region"), sm.get("n"), _b(_r(sm.get("mean"))),
                     _iv(sm.get("ci95"), none="n/a (1 seed)" if sm.get("n") == 1 else "–")])
    page.table(["method", "domain", "region", "seeds", "ended on the other side", "95% t interval"], rows)


# ---------------------------------------------------------------------------------------------------------------------
# offline signals


def signals(page: Page, st: StudyFolder) -> None:
    page.section("signals", "Which offline signal predicts real success")
    if not st.seed_level:
        page.missing("Not recorded: this study's summary predates the offline signals.")
        return
    sig = st.signals()
    if not sig:
        page.missing("Not recorded: no offline signals in this study (no run measured them, or no real-domain "
                     "evaluation).")
        return
    page.p("Spearman's rho over every run (method x training seed) between an offline signal, measured after "
           "training without a closed-loop rollout, and the run's real-domain success in the region; a bootstrap "
           "interval over runs. Domain probe accuracy, held-out real BC loss and OT loss are better when lower, so "
           "for them a negative rho is the useful direction.", "note")
    rows = []
    for s in sig:
        rows.append([s.get("signal"), s.get("region"), s.get("runs", s.get("n")), _b(_sg(s.get("rho"))),
                     _iv(s.get("ci95"), signed=True), _p(s.get("p_value")), s.get("reason") or ""])
    page.table(["signal", "region", "runs", "rho", "95% bootstrap", "p", "why no rho"], rows)
    for region in sorted({str(s.get("region")) for s in sig}):
        here = [s for s in sig if str(s.get("region")) == region]
        strong = sorted((s for s in here if _num(s.get("rho")) and _excludes_zero(s.get("ci95"))),
                        key=lambda s: -abs(s["rho"]))
        if strong:
            best = strong[0]
            text = (f"Region {region}: {best.get('signal')} predicts real success best (rho {_sg(best['rho'])}, 95% "
                    f"{_iv(best.get('ci95'), signed=True)}, {best.get('runs')} runs)"
                    + (f"; also {', '.join(str(s.get('signal')) for s in strong[1:])}" if len(strong) > 1 else "")
                    + ".")
        else:
            runs = max((s.get("runs") or 0 for s in here if _num(s.get("runs"))), default=0)
            text = (f"Region {region}: no offline signal's interval excludes 0 over these {runs} runs — none is "
                    "shown to predict real success.")
        page.p(text)
    off = st.offline()
    if off:
        keys = [k for k in ("domain_probe_acc", "retrieval_at_1", "embed_scale", "effective_rank", "embed_scale_ratio",
                            "heldout_real_bc_loss", "ot_loss") if any(k in o for o in off)]
        page.details(f"offline signals per run ({len(off)} runs)", Page.table_html(
            ["method", "seed", *keys], [[o.get("method"), o.get("seed"), *[o.get(k) for k in keys]] for o in off]))
