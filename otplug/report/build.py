"""The report pages: one for a run folder, one for a study folder (plus a page per run of the study)."""

from __future__ import annotations

import datetime
import os
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from otplug.atomic import write_error
from otplug.atomic import write_text_atomic
from otplug.diagnostics import load_probe_embeddings
from otplug.errors import OtplugError
from otplug.report import figures, study_sections
from otplug.report.data import (
    RunFolder,
    StudyFolder,
    classify,
    open_run,
    open_study,
    read_png,
)
from otplug.report.page import Page, esc, fmt

__all__ = ["build_report", "run_page", "study_page"]

REPORT_NAME = "report.html"
FINAL_KEYS = ["bc_loss", "ot_loss", "loss", "ot_pi_sum", "ot_pi_diag", "ot_pool_mass", "bc_source_fraction", "diag/*",
              "ot_embed_scale/*", "ot_cost_share/*", "ot_cost/*", "grad_norm", "lr"]


def _say(text: str) -> None:
    print(f"otplug report: {text}", file=sys.stderr, flush=True)


def _guard(page: Page, what: str, fn: Callable[[], None]) -> None:
    """Draw one section; a failure is shown in its place (and on stderr) instead of losing the whole page."""
    try:
        fn()
    except Exception as exc:
        if os.environ.get("OTPLUG_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        page.error(f"Could not draw {what}: {msg}")
        _say(f"warning: could not draw {what}: {msg}")


def _ds_line(ds: Any) -> str:
    if not isinstance(ds, dict):
        return "–"
    parts = [str(ds.get("repo_id") or "?")]
    if ds.get("root"):
        parts.append(f"at {ds['root']}")
    nums = [f"{ds[k]} {k}" for k in ("episodes", "frames") if ds.get(k) is not None]
    if ds.get("fps") is not None:
        nums.append(f"{ds['fps']} fps")
    return " ".join(parts) + (f" ({', '.join(nums)})" if nums else "")


# ---------------------------------------------------------------------------------------------------------------------
# run page

def _header(page: Page, run: RunFolder) -> None:
    info, ot, summ = run.run_info or {}, run.ot_options, run.summary or {}
    page.section("run", "Run")
    if run.run_info is None:
        page.missing("run_info.json not recorded: datasets and OT options are unknown.")
    seconds = summ.get("seconds")
    last_step = run.rows[-1]["step"] if run.rows else None
    items: list[tuple[str, Any]] = [
        ("policy", info.get("policy")),
        ("target (real) dataset", _ds_line(info.get("dataset"))),
        ("source (sim) dataset", _ds_line(info.get("source")) if info.get("source") else "–"),
        ("steps trained", summ.get("steps", last_step)),
        ("training time", f"{seconds / 60:.1f} min" if isinstance(seconds, int | float) else None),
        ("processes (world size)", info.get("world_size", summ.get("world_size"))),
        ("OT loss", "on" if ot.get("enabled") else ("off" if ot else None)),
    ]
    if ot.get("enabled") or ot.get("cotrain_only"):
        items += [(f"--ot.{k}", ot.get(k)) for k in ("lambda_ot", "layout", "batch_size", "scope", "pair_info",
                                                      "config", "cotrain_only") if k in ot]
    pool = info.get("target_pool")
    if isinstance(pool, dict):
        names = ", ".join(f"{d.get('name')} ({d.get('root')}, weight {d.get('weight')}, pairing {d.get('pairing')})"
                          for d in pool.get("datasets") or [] if isinstance(d, dict))
        items.append(("target pool (OT only, never BC)",
                      f"{names or '?'}; share {pool.get('share')}: {pool.get('rows_per_step')} pool rows + "
                      f"{pool.get('paired_rows_per_step')} paired rows per OT batch"))
        last = next((r for r in reversed(run.rows) if "ot_pool_mass" in r), None)
        if last is not None:
            items.append(("plan mass on pool rows (last logged step)", f"{last['ot_pool_mass']:.3f}"))
    cfg = run.ot_config
    if cfg is not None:
        items.append(("OT solver options", ", ".join(f"{k}={cfg[k]}" for k in ("reg", "tau_src", "tau_tgt", "heuristic",
                                                                               "cost_normalization", "solver")
                                                       if k in cfg) or "defaults"))
        terms = cfg.get("terms")
        if isinstance(terms, list):
            items.append(("OT terms", "; ".join(
                f"{t.get('name', t.get('type'))}: {t.get('type')} on {t.get('src_key', '(action)')}, weight "
                f"{t.get('weight', 1)}" for t in terms if isinstance(t, dict))))
    items.append(("checkpoints", ", ".join(run.checkpoints) if run.checkpoints else "none saved"))
    page.kv(items)
    if isinstance(info.get("ot_config_text"), str):
        page.details("OT config file as used", f"<pre>{esc(info['ot_config_text'])}</pre>")


def _final(page: Page, run: RunFolder) -> None:
    page.section("final", "Final metrics")
    if not run.rows:
        page.missing("metrics.jsonl not recorded (or empty): no metrics to show.")
        return
    keys = figures.panel_keys(run.keys(), FINAL_KEYS)
    table = []
    for k in keys:
        steps, vals = figures.series(run.rows, k)  # null (non-finite when logged) is NaN
        finite = vals[np.isfinite(vals)]
        table.append([k, float(vals[0]), int(steps[0]), float(vals[-1]), int(steps[-1]),
                      float(finite.min()) if finite.size else None, float(finite.max()) if finite.size else None])
    last = run.rows[-1]
    page.p(f"{len(run.rows)} logged rows, steps {run.rows[0]['step']}..{last['step']}. First and last logged value "
           "of each metric (diagnostics are logged less often than losses).", "note")
    page.table(["metric", "first", "at step", "last", "at step", "min", "max"], table)
    all_last = [[k, v] for k, v in last.items() if k not in ("step",)]
    page.details(f"every metric of the last row (step {last['step']})",
                 Page.table_html(["metric", "value"], all_last))


def _panels(run: RunFolder, panels: Any) -> tuple[list, list[str]]:
    """One curve picture per panel whose metrics the run logged; the titles (and patterns) of the others."""
    keys = run.keys()
    items, absent = [], []
    for title, pats, opts in panels:
        found = figures.panel_keys(keys, pats)
        if found:
            items.append((figures.curve_panel(run.rows, title, found, opts), title, ""))
        else:
            absent.append(f"{title} ({', '.join(pats)})")
    return items, absent


def _curves(page: Page, run: RunFolder) -> None:
    page.section("curves", "Training curves")
    if not run.rows:
        page.missing("Not recorded: metrics.jsonl is missing or empty.")
        return
    items, absent = _panels(run, figures.CURVE_PANELS)
    if items:
        page.grid(items)
    if absent:
        page.missing("Not recorded: " + "; ".join(absent) + ("" if run.ot_enabled else ". This run trained without "
                                                               "the OT loss."))


def _diagnostics(page: Page, run: RunFolder) -> None:
    page.section("diagnostics", "Alignment diagnostics over training")
    keys = run.keys()
    found_any = [k for _t, pats, _o in figures.DIAG_PANELS for k in figures.panel_keys(keys, pats)]
    other = [k for k in keys if k.startswith("diag/") and k not in found_any]
    if not found_any and not other:
        page.missing("Not recorded: no diag/*, ot_embed_scale/* or ot_cost_share/* metrics in this run"
                     + ("." if run.ot_enabled else " (it trained without the OT loss)."))
        return
    page.p("diag/* are measured on a fixed probe set of DTW pairs (otplug.diagnostics): the domain probe is the "
           "held-out accuracy of a linear classifier telling sim from real embeddings (0.5 = indistinguishable); "
           "retrieval@1 is the share of real frames whose nearest sim embedding is their own DTW partner. "
           "Alignment shows as the probe falling towards 0.5 while retrieval, effective rank and the scale ratio "
           "hold; the probe falling together with the scale ratio is scale collapse. ot_embed_scale/* and "
           "ot_cost_share/* come from the OT batches of each step.", "note")
    items, absent = _panels(run, figures.DIAG_PANELS)
    if other:
        items.append((figures.curve_panel(run.rows, "Other diagnostics", other, {}), "Other diagnostics", ""))
    if items:
        page.grid(items)
    if not any(k.startswith("diag/") for k in keys):
        page.missing("Not recorded: the probe-set diagnostics (diag/*); this run did not measure them.")
    elif absent:
        page.missing("Not recorded: " + "; ".join(absent) + ".")


def _plans(page: Page, run: RunFolder, max_plans: int) -> None:
    page.section("plans", "Transport plans over training")
    if not run.plans:
        why = ("the OT loss was off" if not run.ot_enabled else
               "the plan-heatmap sink was not among --ot.sinks")
        page.missing(f"Not recorded: no plans/plan_*.png in this run ({why}).")
        return
    cfg = run.ot_config or {}
    layout = run.ot_options.get("layout")
    text = ("Rows: the source (sim) samples of one OT batch; columns: the target (real) samples. Row i and column i "
            "are a DTW pair (the pair sampler draws the sim partner of real frame i"
            + (f"; {layout} layout" if layout else "") + "), so the diagonal is the DTW pairing and off-diagonal "
            "mass couples frames DTW did not pair. ")
    if cfg.get("heuristic") is True:
        text += ("This run uses the diagonal prior (heuristic = true): the plan is diagonal by construction, so "
                 "these pictures say nothing about what OT would pair on its own.")
    page.p(text, "note")
    chosen = figures.pick_spread(run.plans, max_plans)
    items = []
    for step, path in chosen:
        try:
            items.append((read_png(path), f"plan at step {step}", f"step {step} ({path.name})"))
        except OtplugError as exc:
            page.error(str(exc))
    if items:
        page.grid(items, small=True)
    page.p(f"{len(chosen)} of {len(run.plans)} saved plans shown (steps {run.plans[0][0]}..{run.plans[-1][0]}).",
           "note")


def _embeddings(page: Page, run: RunFolder, tsne: bool) -> None:
    page.section("embeddings", "Sim and real embeddings (probe set)")
    if not run.embeddings:
        page.missing("Not recorded: no embeddings/step_*.npz in this run (the training loop saves them when the "
                     "alignment diagnostics are on; OT off means no probe set).")
        return
    chosen = [run.embeddings[0]] + ([run.embeddings[-1]] if len(run.embeddings) > 1 else [])
    page.p("The same probe pairs embedded by the policy's encoder at the first and the last saved step. Left: by "
           "domain (grey lines join DTW partners); right: by position in the episode. PCA is linear (distances "
           "between the clouds are meaningful); t-SNE shows neighbourhoods only.", "note")
    for step, path in chosen:
        data = load_probe_embeddings(path)
        m = data["metrics"]
        bits = [f"{k.removeprefix('diag/')} {fmt(m[k])}" for k in ("diag/domain_probe_acc", "diag/retrieval_at_1",
                                                                   "diag/effective_rank", "diag/embed_scale",
                                                                   "diag/embed_scale_ratio") if k in m]
        n, f = data["src"].shape
        page.h3(f"step {step}: {n} pairs, {f} features" + (f" — {', '.join(bits)}" if bits else ""))
        png, note = figures.embedding_figure(data, tsne=tsne)
        page.img(png, f"embeddings at step {step}", note)


def _dtw(page: Page, run: RunFolder) -> None:
    page.section("dtw", "DTW alignment of episode pairs")
    path = run.pair_info_path()
    if path is None:
        page.missing("Not recorded: run_info.json names no pair_info (a run without sim/real pairs).")
        return
    if not path.is_file():
        page.missing(f"The pair_info file of this run is not there any more: {path}")
        return
    from otplug.lerobot.pair_info import load_pair_info

    info = load_pair_info(path)
    eps = sorted(info, key=int)
    chosen = figures.pick_spread(eps, 4)
    counts = [len(info[e]) for e in eps]
    dists = sorted(float(e["raw_dtw_dist"]) for ep in eps for e in info[ep])
    n_sim = str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    page.p(f"{path}: {len(eps)} real episodes, {n_sim} sim episodes each, DTW distances "
           f"{fmt(dists[0])}..{fmt(dists[-1])} (median {fmt(dists[len(dists) // 2])}). Each panel: a real episode's "
           "frames (x) and the frames of its closest sim episodes DTW aligned them to (y; bold: the closest). A "
           "straight diagonal means both move at the same pace; flat or steep runs are pauses in one domain. "
           "Training draws the sim partner of a real frame from these paths.", "note")
    page.img(figures.dtw_paths(info, chosen), "DTW warping paths", f"real episodes {', '.join(chosen)}")


def run_page(run: RunFolder, *, tsne: bool = True, max_plans: int = 6, title: str | None = None) -> str:
    page = Page(title or f"otplug run report: {run.path.name}")
    page.h1(title or f"Run report: {run.path.name}",
            f"{run.path.resolve()} — generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    _guard(page, "the run summary", lambda: _header(page, run))
    _guard(page, "the final metrics", lambda: _final(page, run))
    _guard(page, "the training curves", lambda: _curves(page, run))
    _guard(page, "the diagnostics", lambda: _diagnostics(page, run))
    _guard(page, "the transport plans", lambda: _plans(page, run, max_plans))
    _guard(page, "the embeddings", lambda: _embeddings(page, run, tsne))
    _guard(page, "the DTW alignment", lambda: _dtw(page, run))
    notes = list(run.problems)
    if run.skipped_rows:
        notes.append(f"metrics.jsonl: {run.skipped_rows} line(s) skipped (not metric rows: a torn last line of a "
                     "killed run, or corruption)")
    if notes:
        page.section("notes", "Notes")
        for n in notes:
            page.error(n)
    return page.render()


# ---------------------------------------------------------------------------------------------------------------------
# study page

def _link(href: str, text: str) -> tuple[str, str]:
    return ("html", f'<a href="{esc(urllib.parse.quote(href))}">{esc(text)}</a>')


def _study_results(page: Page, st: StudyFolder) -> None:
    page.section("results", "Closed-loop success per training seed")
    cells = st.cells()
    if not cells:
        page.missing("Not recorded yet: no study.json / study_summary.json (the study has not finished its "
                     "evaluations).")
    else:
        study_sections.results_table(page, st, cells)
    pic = st.path / "study.png"
    if pic.is_file():
        page.img(read_png(pic), "study success plot", "study.png (as the study drew it)")
    elif cells:
        page.missing("study.png not recorded.")
    if st.markdown:
        page.details("study.md (the study's own tables)", f"<pre>{esc(st.markdown)}</pre>")


def _study_embeddings(page: Page, st: StudyFolder) -> None:
    page.section("study-embeddings", "Embeddings per method")
    if not st.embedding_pictures:
        page.missing("Not recorded: no embeddings/<method>.png in this study.")
        return
    items = []
    for method, path in st.embedding_pictures:
        try:
            items.append((read_png(path), f"embeddings of {method}", method))
        except OtplugError as exc:
            page.error(str(exc))
    page.grid(items)


def _study_runs(page: Page, st: StudyFolder, runs: list[tuple[str, int, RunFolder]], links: dict[Path, str]) -> None:
    page.section("runs", "Runs")
    if not runs:
        page.missing("Not recorded: no runs/<method>/seed<k>/ folders yet.")
        return
    cols = ["bc_loss", "ot_loss", "ot_pi_diag", "diag/domain_probe_acc", "diag/retrieval_at_1",
            "diag/embed_scale_ratio"]
    rows = []
    for method, seed, run in runs:
        last = run.rows[-1] if run.rows else {}
        status = "finished" if run.summary else ("running or stopped" if run.rows else "not started")
        link = links.get(run.path)
        rows.append([method, seed, last.get("step"), *[last.get(c) for c in cols], status,
                     _link(link, "report") if link else "–"])
    page.table(["method", "seed", "last step", *cols, "status", "page"], rows)
    with_rows = [(m, s, r.rows) for m, s, r in runs if r.rows]
    items = []
    for key, title, log in (("bc_loss", "Behaviour-cloning loss, every run", True),
                            ("ot_loss", "OT loss, every run", False),
                            ("diag/domain_probe_acc", "Domain probe accuracy, every run", False),
                            ("diag/embed_scale_ratio", "Embedding scale ratio, every run", True)):
        if any(key in r for _m, _s, rows_ in with_rows for r in rows_):
            items.append((figures.study_curves(with_rows, key, title, log=log), title, ""))
    if items:
        page.grid(items)


def study_page(st: StudyFolder, runs: list[tuple[str, int, RunFolder]], links: dict[Path, str]) -> str:
    page = Page(f"otplug study report: {st.path.name}")
    page.h1(f"Study report: {st.path.name}",
            f"{st.path.resolve()} — generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    _guard(page, "the study design", lambda: study_sections.design(page, st))
    _guard(page, "the results", lambda: _study_results(page, st))
    _guard(page, "the comparisons", lambda: study_sections.comparisons(page, st))
    _guard(page, "the sim - real gaps", lambda: study_sections.gaps(page, st))
    _guard(page, "where the episodes end", lambda: study_sections.ends(page, st))
    _guard(page, "the offline signals", lambda: study_sections.signals(page, st))
    _guard(page, "the embeddings", lambda: _study_embeddings(page, st))
    _guard(page, "the runs", lambda: _study_runs(page, st, runs, links))
    if st.problems:
        page.section("notes", "Notes")
        for n in st.problems:
            page.error(n)
    return page.render()


# ---------------------------------------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    try:
        if path.is_dir():
            raise OtplugError(f"--out {path} is a folder; give a file name such as {path / REPORT_NAME}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except OSError as exc:
        raise write_error(path, exc, "the report") from exc


def _check_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise OtplugError("otplug report needs matplotlib: pip install matplotlib (part of 'otplug[lerobot]')")


def build_report(folder: str | Path, out: str | Path | None = None, *, tsne: bool = True, run_pages: bool = True,
                 max_plans: int = 6, quiet: bool = False) -> Path:
    """Write the report of a run or study folder to ``out`` (default ``<folder>/report.html``); returns its path.
    A study also gets ``runs/<method>/seed<k>/report.html`` for each run (``run_pages``), linked from its page."""
    folder = Path(folder).expanduser()
    kind = classify(folder)
    _check_matplotlib()
    out_path = Path(out).expanduser() if out is not None else folder / REPORT_NAME
    say = (lambda _t: None) if quiet else _say
    if kind == "run":
        _write(out_path, run_page(open_run(folder), tsne=tsne, max_plans=max_plans))
        return out_path
    st = open_study(folder)
    runs = [(m, s, open_run(p)) for m, s, p in st.runs]
    links: dict[Path, str] = {}
    for method, seed, run in runs:
        if not run_pages or not (run.rows or run.run_info):
            continue
        target = run.path / REPORT_NAME
        try:
            _write(target, run_page(run, tsne=tsne, max_plans=max_plans,
                                    title=f"Run report: {method} seed {seed} ({folder.name})"))
        except OtplugError as exc:
            say(f"warning: {exc}")
            continue
        links[run.path] = os.path.relpath(target.resolve(), out_path.resolve().parent)
        say(f"wrote {target}")
    _write(out_path, study_page(st, runs, links))
    return out_path
