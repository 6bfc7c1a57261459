"""``otplug report`` on synthetic run and study folders (no training): every section, embedded images, the no-OT
run, a study, bad input. ``python tests/test_report.py OUT_DIR`` writes the synthetic folders (used by
benchmarks/screenshot_report.sh)."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from otplug.cli import main as cli_main
from otplug.diagnostics import save_probe_embeddings
from otplug.errors import OtplugError
from otplug.report import build_report

# ---------------------------------------------------------------------------------------------------------------------
# synthetic folders


def _pairing(n_tgt: int, n_src: int, pause: int) -> dict[str, list[int]]:
    """A monotone warping path from a target episode of n_tgt frames to a source episode of n_src frames, with a
    pause (several target frames on one source frame) in the middle."""
    out = {}
    for t in range(n_tgt):
        s = round(t * (n_src - 1) / max(1, n_tgt - 1))
        if n_tgt // 3 <= t < n_tgt // 3 + pause:
            s = round((n_tgt // 3) * (n_src - 1) / max(1, n_tgt - 1))
        out[str(t)] = [s] if t % 4 else [s, min(n_src - 1, s + 1)]
    return out


def write_pair_info(path: Path, n_tgt_eps: int = 6) -> Path:
    info = {}
    for t in range(n_tgt_eps):
        entries = []
        for k in range(3):
            entries.append({"demo_name": str(10 + 3 * t + k), "raw_dtw_dist": round(1.5 + 0.7 * k + 0.1 * t, 3),
                            "pairing": _pairing(30 + 2 * t, 34 + 3 * k, pause=3 + k)})
        info[str(t)] = entries
    path.write_text(json.dumps(info))
    return path


def _metrics_rows(steps: int, ot: bool, rng: np.random.Generator) -> list[dict]:
    rows = []
    for step in range(5, steps + 1, 5):
        x = step / steps
        row = {"step": step, "bc_loss": float(60 * math.exp(-4 * x) + 2 + rng.normal(0, 0.8)),
               "loss": 0.0, "grad_norm": float(200 * math.exp(-3 * x) + 5), "lr": 1e-5,
               "bc_source_fraction": float(0.5 + rng.normal(0, 0.05))}
        if ot:
            row.update({"ot_loss": float(0.5 * math.exp(-2 * x) + 0.05 + rng.normal(0, 0.01)),
                        "ot_pi_sum": float(0.7 + 0.2 * x), "ot_pi_diag": float(0.1 + 0.6 * x),
                        "ot_embed_scale/img": float(17 * math.exp(-3.5 * x) + 0.2),
                        "ot_embed_scale/state": float(9 + x),
                        "ot_cost/img": float(0.3 - 0.2 * x), "ot_cost/act": 1.2,
                        "ot_cost_share/img": float(0.6 - 0.3 * x), "ot_cost_share/act": float(0.4 + 0.3 * x)})
            if step % 50 == 0:
                row.update({"diag/embed_scale": float(17 * math.exp(-3.5 * x) + 0.2),
                            "diag/embed_scale_ratio": float(math.exp(-3.5 * x)),
                            "diag/effective_rank": float(12 - 5 * x),
                            "diag/domain_probe_acc": float(1.0 - 0.45 * x),
                            "diag/retrieval_at_1": float(0.2 + 0.5 * x),
                            "diag/retrieval_at_1_cosine": float(0.25 + 0.5 * x)})
        row["loss"] = row["bc_loss"] + 0.1 * row.get("ot_loss", 0.0)
        rows.append(row)
    if ot:  # one non-finite value, as the jsonl sink writes it
        rows[len(rows) // 2]["ot_loss"] = None
        rows[len(rows) // 2]["nonfinite"] = ["ot_loss"]
    return rows


def _embeddings(n: int, f: int, gap: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    phase = np.linspace(0, 1, n)
    base = np.stack([np.cos(3 * phase), np.sin(3 * phase)], 1) @ rng.normal(size=(2, f)) * 3
    src = base + rng.normal(0, 0.3, size=(n, f))
    tgt = base + rng.normal(0, 0.3, size=(n, f)) + gap * rng.normal(size=(1, f))
    return src, tgt, phase


def make_run(root: Path, *, ot: bool = True, steps: int = 400, seed: int = 0, pair_info: Path | None = None,
             plan_every: int = 50) -> Path:
    """A run folder as `otplug train` writes it (with the training loop's diagnostics when ``ot``)."""
    from otplug.sinks.heatmap import save_plan_png

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = _metrics_rows(steps, ot, rng)
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ot_cfg = {"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "heuristic": False, "cost_normalization": "mean",
              "terms": [{"type": "image", "name": "img", "src_key": "observation.images.front", "weight": 1.0},
                        {"type": "action-slice", "name": "act", "weight": 0.5}]}
    if ot and pair_info is None:
        pair_info = write_pair_info(root.parent / f"{root.name}_pair_info.json")
    info = {"dataset": {"repo_id": "otplug/reach_real_A", "root": "/data/real_A", "frames": 980, "episodes": 20,
                        "fps": 10},
            "policy": "act", "world_size": 1,
            "ot": {"enabled": ot, "config": "/data/ot.json" if ot else None, "lambda_ot": 0.1,
                   "layout": "single-pass", "batch_size": 8, "scope": "rank", "source_repo_id": "otplug/sim" if ot
                   else None, "source_root": "/data/sim" if ot else None,
                   "pair_info": str(pair_info) if ot else None, "cotrain_only": False}}
    if ot:
        info["source"] = {"repo_id": "otplug/sim", "root": "/data/sim", "frames": 4900, "episodes": 100, "fps": 10}
        info["ot_config_text"] = json.dumps(ot_cfg)
    (root / "run_info.json").write_text(json.dumps(info, indent=2))
    (root / "train_summary.json").write_text(json.dumps({"steps": steps, "seconds": 321.5, "first": rows[0],
                                                         "last": rows[-1], "world_size": 1,
                                                         "output_dir": str(root)}))
    ck = root / "checkpoints" / f"{steps:06d}" / "pretrained_model"
    ck.mkdir(parents=True)
    (ck / "config.json").write_text("{}")
    (root / "checkpoints" / "last").symlink_to(f"{steps:06d}")
    if ot:
        for step in range(0, steps + 1, plan_every):
            x = step / steps
            plan = rng.random((8, 8)) * (1 - x) * 0.02 + np.eye(8) * (0.02 + 0.08 * x)
            save_plan_png(root / "plans" / f"plan_{step:06d}.png", plan, f"step {step}")
        for step, gap in ((0, 4.0), (steps, 0.4)):
            src, tgt, phase = _embeddings(48, 64, gap, rng)
            save_probe_embeddings(root, step, src, tgt, src_phase=phase, tgt_phase=phase,
                                  metrics={"diag/domain_probe_acc": 1.0 if step == 0 else 0.55,
                                           "diag/embed_scale": 20.0})
    return root


#: successes out of STUDY_EPISODES per training seed 0, 1, 2 (method, domain, region): cotrain-ot beats co-training in
#: real A on every seed (+0.20, +0.22, +0.20: separated), not in real B (+0.20, -0.10, +0.08)
STUDY_EPISODES = 50
STUDY_COUNTS = {
    ("target-only", "real", "A"): [30, 26, 33], ("target-only", "real", "B"): [2, 4, 1],
    ("target-only", "sim", "A"): [5, 3, 6], ("target-only", "sim", "B"): [4, 2, 3],
    ("cotrain", "real", "A"): [25, 20, 28], ("cotrain", "real", "B"): [12, 20, 8],
    ("cotrain", "sim", "A"): [40, 38, 42], ("cotrain", "sim", "B"): [35, 30, 38],
    ("cotrain-ot", "real", "A"): [35, 31, 38], ("cotrain-ot", "real", "B"): [22, 15, 12],
    ("cotrain-ot", "sim", "A"): [41, 36, 43], ("cotrain-ot", "sim", "B"): [30, 33, 34],
}
STUDY_METHODS = ["target-only", "cotrain", "cotrain-ot"]


def study_rows(seeds: int = 3) -> list[dict]:
    """study.json rows of the synthetic study (the format ``otplug study`` writes: test split, scenes 300000..)."""
    rows = []
    for (m, d, g), counts in STUDY_COUNTS.items():
        for seed, s in enumerate(counts[:seeds]):
            rows.append({"method": m, "seed": 1000 + seed, "domain": d, "region": g, "episodes": STUDY_EPISODES,
                         "successes": s, "success_rate": s / STUDY_EPISODES, "split": "test",
                         "scene_seeds": [300000, 300000 + STUDY_EPISODES]})
    return rows


def study_summary(rows: list[dict]) -> dict:
    """study_summary.json as ``otplug study`` writes it: :func:`otplug.bench.study_summary.summarize` and the meta."""
    from otplug.bench.study_summary import summarize

    seeds = sorted({r["seed"] for r in rows})
    offline = {}
    for r in rows:  # the domain probe falls as real A success rises (a signal that predicts), the OT loss is noise
        if (r["domain"], r["region"]) == ("real", "A"):
            offline[(r["method"], r["seed"])] = {
                "domain_probe_acc": 1.0 - 0.5 * r["success_rate"], "retrieval_at_1": 0.3,
                "embed_scale": 4.0, "effective_rank": 12.0, "embed_scale_ratio": 0.9 + 0.01 * (r["seed"] % 3),
                "heldout_real_bc_loss": 1.0 + 0.1 * ((r["seed"] * 7 + len(r["method"])) % 5),
                "ot_loss": 0.2 if r["method"].endswith("-ot") else None}
    summary = summarize(rows, offline, methods=STUDY_METHODS, domains=["real", "sim"], regions=["A", "B"],
                        n_boot=2000)
    meta = {"minutes": 12.0, "device": "cpu", "launcher": "local", "jobs": 2, "split": "test",
            "scene_seeds": [300000, 300000 + STUDY_EPISODES], "training_seeds": seeds}
    return {**summary, **meta, "offline": [{"method": m, "seed": s, **v} for (m, s), v in offline.items()]}


def old_study_summary(rows: list[dict]) -> dict:
    """study_summary.json as ``otplug study`` wrote it before SPEC §8.1 (pooled Wilson cells, per-seed lists)."""
    cells = []
    for m, d, g in STUDY_COUNTS:
        rs = [r for r in rows if (r["method"], r["domain"], r["region"]) == (m, d, g)]
        s, n = sum(r["successes"] for r in rs), sum(r["episodes"] for r in rs)
        cells.append({"method": m, "domain": d, "region": g, "seeds": len(rs), "episodes": n, "successes": s,
                      "success_rate": s / n, "ci95": [s / n - 0.09, s / n + 0.09],
                      "per_seed": [r["success_rate"] for r in rs], "seed_mean_ci95": [0.0, 1.0]})
    return {"cells": cells, "minutes": 12.0, "device": "cpu"}


def make_study(root: Path, seeds: int = 3, old: bool = False) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    root.mkdir(parents=True, exist_ok=True)
    methods = STUDY_METHODS
    config = {"methods": methods, "seeds": seeds, "steps": 400, "eval_episodes": STUDY_EPISODES,
              "eval_domains": ["real", "sim"], "eval_regions": ["A", "B"]}
    rows = study_rows(seeds)
    if old:
        rows = [{k: v for k, v in r.items() if k not in ("split", "scene_seeds")} for r in rows]
    else:
        config["split"] = "test"
    (root / "study_config.json").write_text(json.dumps(config))
    (root / "study.json").write_text(json.dumps(rows))
    (root / "study_summary.json").write_text(json.dumps(old_study_summary(rows) if old else study_summary(rows)))
    (root / "study.md").write_text("# otplug study\n\n| method | real A | real B |\n|---|---|---|\n")
    for path in (root / "study.png", root / "embeddings" / "cotrain-ot.png", root / "embeddings" / "cotrain.png"):
        fig = Figure(figsize=(4, 3))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.bar(range(3), [0.3, 0.5, 0.6])
        ax.set_title(path.stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    pair_info = write_pair_info(root / "pair_info.json")
    for i, m in enumerate(methods):
        for seed in range(min(seeds, 2)):
            make_run(root / "runs" / m / f"seed{1000 + seed}", ot=m.endswith("-ot"), seed=10 * i + seed,
                     pair_info=pair_info, plan_every=200)
    return root


# ---------------------------------------------------------------------------------------------------------------------
# tests

SECTIONS = ("run", "final", "curves", "diagnostics", "plans", "embeddings", "dtw")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("full") / "run")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("study") / "study")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<h2 id="{anchor}">')
    nxt = page.find("<h2 ", start + 5)
    return page[start: nxt if nxt > 0 else len(page)]


def _images(text: str) -> int:
    return len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}">', text))


def test_full_run(full_run, tmp_path):
    run = _copy(full_run, tmp_path / "run")
    out = build_report(run, tsne=False, quiet=True)
    assert out == run / "report.html"
    page = out.read_text()
    for anchor in SECTIONS:
        assert f'<h2 id="{anchor}">' in page, anchor
    assert 'class="error"' not in page
    assert "otplug/reach_real_A" in page and "10 fps" in page and "single-pass" in page
    assert _images(_section(page, "curves")) == 4  # BC, OT, plan mass, source share
    assert _images(_section(page, "diagnostics")) == 5
    plans = _section(page, "plans")
    assert _images(plans) == 6 and "step 0 " in plans and "step 400 " in plans and "DTW pair" in plans
    emb = _section(page, "embeddings")
    assert _images(emb) == 2 and "step 0:" in emb and "step 400:" in emb
    assert "48 pairs, 64 features" in emb
    dtw = _section(page, "dtw")
    assert _images(dtw) == 1 and "6 real episodes" in dtw
    assert "Not recorded" not in page
    # self-contained: no external references at all
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<script" not in page


def test_full_run_with_tsne(full_run, tmp_path):
    pytest.importorskip("sklearn")
    page = build_report(full_run, tmp_path / "elsewhere" / "r.html", quiet=True).read_text()
    emb = _section(page, "embeddings")
    assert _images(emb) == 2 and "t-SNE" not in re.sub(r"<img[^>]*>", "", emb).replace("t-SNE shows", "")


def test_run_without_ot(tmp_path):
    run = make_run(tmp_path / "run", ot=False)
    page = build_report(run, tsne=False, quiet=True).read_text()
    assert 'class="error"' not in page
    for anchor in ("plans", "embeddings", "dtw"):
        sec = _section(page, anchor)
        assert "Not recorded" in sec and _images(sec) == 0, anchor
    assert "the OT loss was off" in _section(page, "plans")
    assert _images(_section(page, "curves")) == 2  # BC loss and source share
    assert "This run trained without the OT loss" in _section(page, "curves")
    assert "it trained without the OT loss" in _section(page, "diagnostics")


def test_ot_run_without_diagnostics(tmp_path):
    run = make_run(tmp_path / "run", plan_every=400)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("diag/")})
                                               + "\n" for r in rows))
    page = build_report(run, tsne=False, quiet=True).read_text()
    diag = _section(page, "diagnostics")
    assert "did not measure them" in diag and _images(diag) == 2  # ot_embed_scale, ot_cost_share
    assert _images(_section(page, "plans")) == 2


def test_bare_metrics_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "bc_loss": 3.0}\n{"step": 2, "bc_loss": 2.5}\n{"step": 3, "bc')
    page = build_report(run, tsne=False, quiet=True).read_text()
    assert "run_info.json not recorded" in page
    assert "1 line(s) skipped" in page  # the torn last line
    assert _images(_section(page, "curves")) == 1


def _rows_of(section: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", section)


def test_study(study_dir, tmp_path):
    study = _copy(study_dir, tmp_path / "study")
    out = build_report(study, tsne=False, quiet=True)
    page = out.read_text()
    assert 'class="error"' not in page and 'class="warn"' not in page
    order = [page.index(f'<h2 id="{a}">') for a in ("study", "results", "comparisons", "gaps", "signals",
                                                    "study-embeddings", "runs")]
    assert order == sorted(order)
    head = _section(page, "study")
    assert "test" in head and "300000..300049 (50 scenes)" in head and "1000, 1001, 1002 (3)" in head
    res = _section(page, "results")
    assert all(m in res for m in STUDY_METHODS) and "95% t interval" in res and "episode noise only" in res
    assert _images(res) == 1  # study.png
    assert "study.md" in res
    assert _images(_section(page, "study-embeddings")) == 2
    runs = _section(page, "runs")
    assert runs.count('<a href="runs/') == 6
    assert _images(runs) >= 2
    for m in STUDY_METHODS:
        sub = (study / "runs" / m / "seed1001" / "report.html").read_text()
        assert f"Run report: {m} seed 1001" in sub
    assert "Not recorded" in _section((study / "runs" / "cotrain" / "seed1000" / "report.html").read_text(), "plans")


def test_study_sections_show_the_summary(study_dir, tmp_path):
    """The numbers of study_summary.json appear, and "separated" only where the paired interval excludes 0."""
    study = _copy(study_dir, tmp_path / "study")
    summary = json.loads((study / "study_summary.json").read_text())
    page = build_report(study, tsne=False, run_pages=False, quiet=True).read_text()
    res = _section(page, "results")
    for c in summary["cells"]:
        row = next(r for r in _rows_of(res) if f"<td>{c['method']}</td><td>{c['domain']}</td><td>{c['region']}</td>"
                   in r)
        assert f"<b>{c['mean']:.2f}</b>" in row and f"{c['ci95'][0]:.2f} to {c['ci95'][1]:.2f}" in row
        assert all(f"{k}: {v:.2f}" in row for k, v in c["per_seed"].items())
        w = c["episode_noise_wilson95"]
        assert f"{w[0]:.2f} to {w[1]:.2f}" in row and row.count("<circle") == 3
    comp = _section(page, "comparisons")
    assert len(summary["comparisons"]) == 8
    seen = {True: 0, False: 0}
    for c in summary["comparisons"]:
        pd, hb = c["paired"], c["hierarchical_bootstrap"]
        row = next(r for r in _rows_of(comp) if f"<td>{c['method']}</td><td>{c['domain']} {c['region']}</td>" in r)
        lo, hi = pd["ci95"]
        excludes = lo > 0 or hi < 0
        assert ("separated" in row) == excludes, row
        seen[excludes] += 1
        assert f"<b>{pd['mean']:+.2f}</b>" in row and f"{lo:+.2f} to {hi:+.2f}" in row
        assert f"{pd['mdd80']:.2f}" in row and f"{hb['ci95'][0]:+.2f} to {hb['ci95'][1]:+.2f}" in row
    assert seen[True] >= 1 and seen[False] >= 1
    ot_a = next(r for r in _rows_of(comp) if "<td>cotrain-ot</td><td>real A</td>" in r)
    ot_b = next(r for r in _rows_of(comp) if "<td>cotrain-ot</td><td>real B</td>" in r)
    assert "<b>separated</b>" in ot_a and "separated" not in ot_b
    mdds = [c["paired"]["mdd80"] for c in summary["comparisons"]]
    real = [c["paired"]["mdd80"] for c in summary["comparisons"] if c["domain"] == "real"]
    assert "smallest difference these 3 paired seeds could detect with 80% power: in real, " in comp
    assert f"in real, {min(real):.2f}" in comp and f"{max(real):.2f}" in comp
    blind = sum(m > 0.10 for m in mdds)
    assert 0 < blind < len(mdds) and f"{blind} of {len(mdds)} cannot detect +0.10" in comp
    gaps = _section(page, "gaps")
    for g in summary["gaps"]:
        row = next(r for r in _rows_of(gaps) if f"<td>{g['method']}</td><td>{g['region']}</td><td" in r)
        assert f"<b>{g['gap']['mean']:+.2f}</b>" in row
    assert {g["method"] for g in summary["gap_closed"]} == {"cotrain-ot"}
    for g in summary["gap_closed"]:
        row = next(r for r in _rows_of(gaps) if f"<td>{g['method']}</td><td>{g['region']}</td><td" in r
                   and f"{g['gap_cotrain']:+.2f}" in r)
        assert f"<b>{g['closed']['mean']:+.2f}</b>" in row
        assert (f"{g['fraction']:.2f}" in row) if g["fraction"] is not None else g["fraction_reason"][:20] in row
    sig = _section(page, "signals")
    probe_a = next(s for s in summary["signals"] if (s["signal"], s["region"]) == ("domain_probe_acc", "A"))
    assert probe_a["rho"] < -0.9 and f"<b>{probe_a['rho']:+.2f}</b>" in sig
    assert "Region A: domain_probe_acc predicts real success best" in sig
    assert "offline signals per run (9 runs)" in sig
    assert 'class="error"' not in page


def test_one_seed_study_warns(tmp_path):
    study = make_study(tmp_path / "study", seeds=1)
    page = build_report(study, tsne=False, run_pages=False, quiet=True).read_text()
    assert 'class="warn">One seed is not evidence; numbers vary by machine.' in _section(page, "study")
    assert "n/a (1 seed)" in _section(page, "results")
    comp = _section(page, "comparisons")
    assert "separated</b>" not in comp and "cannot detect any difference" in comp
    assert "(episodes only)" in comp and "n/a (1 seed)" in _section(page, "gaps")
    assert 'class="error"' not in page


def test_study_in_progress(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study_config.json").write_text(json.dumps({"methods": ["cotrain"], "seeds": 1}))
    page = build_report(study, tsne=False, quiet=True).read_text()
    assert "Not recorded yet" in _section(page, "results")
    assert "Not recorded" in _section(page, "runs")
    assert "One seed is not evidence" in page


def test_old_study_summary_is_recomputed_per_seed(tmp_path):
    """A study from before SPEC §8.1 (pooled Wilson cells, no split): seed means from study.json."""
    from otplug.stats import seed_mean

    study = make_study(tmp_path / "study", old=True)
    page = build_report(study, tsne=False, run_pages=False, quiet=True).read_text()
    assert 'class="error"' not in page
    assert "not recorded (a study from before the dev/test splits)" in _section(page, "study")
    assert "older format" in _section(page, "study")
    res = _section(page, "results")
    rates = [s / STUDY_EPISODES for s in STUDY_COUNTS[("cotrain-ot", "real", "A")]]
    sm = seed_mean(rates)
    row = next(r for r in _rows_of(res) if "<td>cotrain-ot</td><td>real</td><td>A</td>" in r)
    assert f"<b>{sm.mean:.2f}</b>" in row and f"{sm.ci95[0]:.2f} to {sm.ci95[1]:.2f}" in row
    assert "Computed from study.json" in res
    for anchor in ("comparisons", "gaps", "signals"):
        assert "Not recorded" in _section(page, anchor)
    (study / "study.json").unlink()  # only the old summary: its per-seed lists
    page = build_report(study, tsne=False, run_pages=False, quiet=True).read_text()
    row = next(r for r in _rows_of(_section(page, "results")) if "<td>cotrain-ot</td><td>real</td><td>A</td>" in r)
    assert f"<b>{sm.mean:.2f}</b>" in row and 'class="error"' not in page


def test_study_cells_from_study_json(study_dir, tmp_path):
    from otplug.stats import seed_mean

    study = _copy(study_dir, tmp_path / "study")
    (study / "study_summary.json").unlink()
    page = build_report(study, tsne=False, run_pages=False, quiet=True).read_text()
    res = _section(page, "results")
    sm = seed_mean([s / STUDY_EPISODES for s in STUDY_COUNTS[("cotrain", "sim", "B")]])
    row = next(r for r in _rows_of(res) if "<td>cotrain</td><td>sim</td><td>B</td>" in r)
    assert f"<b>{sm.mean:.2f}</b>" in row and "1000: 0.70" in row
    assert "300000..300049" in _section(page, "study")  # the design from the rows
    assert "report</a>" not in _section(page, "runs")


def test_malformed_study_files_are_one_line(study_dir, tmp_path):
    study = _copy(study_dir, tmp_path / "study")
    summary = json.loads((study / "study_summary.json").read_text())
    summary["comparisons"] = "junk"
    summary["gaps"] = [summary["gaps"][0], 7, {"method": "x", "region": "A", "gap": "?"}]
    summary["signals"][0]["rho"] = "high"
    summary["cells"][0]["ci95"] = [0.1]
    (study / "study_summary.json").write_text(json.dumps(summary))
    page = build_report(study, tsne=False, run_pages=False, quiet=True).read_text()
    notes = html.unescape(_section(page, "notes"))
    assert notes.count('class="error"') == 2
    assert "'comparisons' is not a list" in notes and "1 of the 3 entries of 'gaps' are not objects" in notes
    assert "Could not draw" not in page
    (study / "study_summary.json").write_text("{broken")
    (study / "study.json").write_text("[1, 2, {}]")
    page = build_report(study, tsne=False, run_pages=False, quiet=True).read_text()
    assert page.count("not valid JSON") == 1 and "3 row(s) without" in page
    assert "Not recorded yet" in _section(page, "results")


def test_bad_input(tmp_path, capsys):
    with pytest.raises(OtplugError, match="no such folder"):
        build_report(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OtplugError, match="not a folder"):
        build_report(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OtplugError, match="neither a run folder"):
        build_report(tmp_path / "empty")
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("otplug: error:")
    run = make_run(tmp_path / "run", ot=False)
    assert cli_main(["report", str(run), "--out", str(tmp_path)]) == 2  # --out is a folder
    assert "is a folder" in capsys.readouterr().err


def test_cli_writes_page(tmp_path, capsys):
    run = make_run(tmp_path / "run", ot=False)
    assert cli_main(["report", str(run), "--out", str(tmp_path / "x.html"), "--no-tsne", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "x.html")
    assert (tmp_path / "x.html").read_text().startswith("<!DOCTYPE html>")


def test_damaged_files_are_reported_not_fatal(full_run, tmp_path):
    run = _copy(full_run, tmp_path / "run")
    (run / "plans" / "plan_000100.png").write_bytes(b"not a png")
    (run / "embeddings" / "step_000400.npz").write_bytes(b"junk")
    info = json.loads((run / "run_info.json").read_text())
    info["dataset"]["repo_id"] = "<script>alert(1)</script>"
    info["ot"]["pair_info"] = str(tmp_path / "gone.json")
    (run / "run_info.json").write_text(json.dumps(info))
    page = build_report(run, tsne=False, quiet=True).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "not a PNG image" in _section(page, "plans")
    assert "Could not draw the embeddings" in _section(page, "embeddings")
    assert "not there any more" in _section(page, "dtw")
    (run / "run_info.json").write_text("{broken")
    page = build_report(run, tsne=False, quiet=True).read_text()
    assert "not valid JSON" in page


@pytest.mark.slow
def test_screenshot_in_headless_chromium(full_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    out = build_report(full_run, tmp_path / "page.html", tsne=False, quiet=True)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,3000", out.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000


if __name__ == "__main__":  # write the synthetic folders: python tests/test_report.py OUT_DIR
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "report_fixtures")
    shutil.rmtree(base, ignore_errors=True)
    print(make_run(base / "run_ot"))
    print(make_run(base / "run_no_ot", ot=False))
    print(make_study(base / "study"))
    print(make_study(base / "study_one_seed", seeds=1))
    print(make_study(base / "study_old", old=True))


def test_fixed_limits_keep_a_linear_axis_without_warnings():
    """A rate panel (fixed 0..1 limits) whose values span decades stays linear: no matplotlib warning about a
    non-positive limit on a log axis reaches the user."""
    import warnings

    from otplug.report.figures import curve_panel

    rows = [{"step": s, "diag/retrieval_at_1": v} for s, v in ((0, 0.001), (10, 0.05), (20, 0.9))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = curve_panel(rows, "retrieval", ["diag/retrieval_at_1"], {"ylim": (0.0, 1.05)})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_pca_lives_in_stats():
    from otplug import stats
    from otplug.report import figures

    assert figures.pca_2d is stats.pca_2d
    xy, share = figures.pca_2d(np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]]))
    assert np.allclose(np.abs(xy[:, 0]), [2.0, 0.0, 2.0]) and share.tolist() == [1.0, 0.0]
