"""What a study writes besides ``study.json`` and ``study_summary.json``: ``study.md`` (the tables), ``study.png``
(seed means with their intervals) and ``embeddings/<method>.png`` (PCA of the policy's image features of
DTW-paired sim/real frames). Pictures and text only: the numbers come from :mod:`otplug.bench.study_summary`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from otplug.atomic import save_file, save_text
from otplug.bench.study_config import RECOMMENDED_OT, StudyConfig

__all__ = ["embedding_picture", "write_plot", "write_table"]


def _r(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) and not isinstance(v, bool) else "–"


def _ci(ci: Any) -> str:
    return f"{_r(ci[0])} to {_r(ci[1])}" if isinstance(ci, list | tuple) and len(ci) == 2 else "n/a (1 seed)"


def _signed(v: Any) -> str:
    return f"{v:+.2f}" if isinstance(v, int | float) else "–"


def _signed_ci(ci: Any) -> str:
    return f"({_signed(ci[0])}, {_signed(ci[1])})" if isinstance(ci, list | tuple) and len(ci) == 2 else "(n/a)"


def _results(summary: dict[str, Any], cfg: StudyConfig) -> list[str]:
    regions = [(d, r) for d in cfg.eval_domains for r in cfg.eval_regions]
    by = {(c["method"], c["domain"], c["region"]): c for c in summary["cells"]}
    lines = ["## Success (mean over training seeds, 95% t interval)", "",
             "Each cell: the mean over seeds of the success rate, its t interval over seeds (n - 1 dof), and the "
             "per-seed rates. The pooled Wilson interval, in the JSON, is one policy's episode noise only.", "",
             "| method | " + " | ".join(f"{d} {r}" for d, r in regions) + " |", "|---" * (len(regions) + 1) + "|"]
    for m in cfg.methods:
        row = [m]
        for d, r in regions:
            c = by.get((m, d, r))
            if c is None:
                row.append("–")
                continue
            per = ", ".join(_r(x) for x in c["per_seed"].values())
            row.append(f"**{_r(c['mean'])}** ({_ci(c['ci95'])}) [{per}]" if c["seeds"] <= 5
                       else f"**{_r(c['mean'])}** ({_ci(c['ci95'])})")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _comparisons(summary: dict[str, Any]) -> list[str]:
    comps = summary["comparisons"]
    if not comps:
        return []
    lines = ["", "## Against co-training, paired by training seed", "",
             "Difference of success (method − co-training) over the seeds both ran: mean, 95% t interval, p "
             "(paired t), the smallest true difference these seeds detect with 80% power (mdd80), and the "
             "hierarchical bootstrap (seeds, then episodes) as a check. **separated** = the paired seed-level "
             "interval excludes 0; nothing else is called that.", "",
             "| method | cell | seeds | difference | 95% t interval | p | mdd80 | bootstrap 95% | separated |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        pd, hb = c["paired"], c["hierarchical_bootstrap"]
        p = f"{pd['p_value']:.3f}" if isinstance(pd.get("p_value"), float) else "–"
        lines.append(f"| {c['method']} | {c['domain']} {c['region']} | {pd['n']} | {_signed(pd['mean'])} | "
                     f"{_signed_ci(pd['ci95'])} | {p} | {_r(pd['mdd80'])} | {_signed_ci(hb['ci95'])} | "
                     f"{'**yes**' if pd['separated'] else 'no'} |")
    return lines


def _gaps(summary: dict[str, Any]) -> list[str]:
    if not summary["gaps"]:
        return []
    lines = ["", "## The room: sim − real success per method (paired per seed)", "",
             "| method | region | sim − real | 95% t interval |", "|---|---|---|---|"]
    for g in summary["gaps"]:
        gap = g["gap"]
        lines.append(f"| {g['method']} | {g['region']} | {_signed(gap['mean'])} | {_signed_ci(gap['ci95'])} |")
    if summary["gap_closed"]:
        lines += ["", "How much of co-training's sim − real gap each alignment method closes (gap_cotrain − "
                  "gap_method per seed, t interval; the fraction with a paired seed bootstrap):", "",
                  "| method | region | co-training gap | method gap | closed | 95% t interval | fraction closed | "
                  "95% bootstrap |", "|---|---|---|---|---|---|---|---|"]
        for g in summary["gap_closed"]:
            frac = _r(g["fraction"]) if g["fraction"] is not None else "– (no gap)"
            fci = _signed_ci(g["fraction_ci95"]) if g["fraction_ci95"] else f"({g.get('fraction_reason') or 'n/a'})"
            lines.append(f"| {g['method']} | {g['region']} | {_signed(g['gap_cotrain'])} | "
                         f"{_signed(g['gap_method'])} | "
                         f"{_signed(g['closed']['mean'])} | {_signed_ci(g['closed']['ci95'])} | {frac} | {fci} |")
    return lines


def _ends(summary: dict[str, Any], cfg: StudyConfig) -> list[str]:
    ends = summary.get("ends") or []  # absent from a summary written before it was recorded
    if not ends:
        return []
    regions = [(d, r) for d in cfg.eval_domains for r in cfg.eval_regions]
    by = {(e["method"], e["domain"], e["region"]): e["other_side"] for e in ends}
    lines = ["", "## Where the episodes end: on the other region's side", "",
             "The fraction of episodes whose agent ended on the other region's side of the goal (mean over seeds, 95% "
             "t interval): the policy took it to the wrong part of the table, not merely short of the goal. An "
             "alignment that pulls the real frames of B onto region A shows here (docs/benchmark.md, fourth round).",
             "", "| method | " + " | ".join(f"{d} {r}" for d, r in regions) + " |", "|---" * (len(regions) + 1) + "|"]
    for m in cfg.methods:
        row = [m]
        for key in regions:
            e = by.get((m, *key))
            row.append("–" if e is None else f"{_r(e['mean'])} ({_ci(e['ci95'])})")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _signals(summary: dict[str, Any]) -> list[str]:
    if not summary["signals"]:
        return []
    lines = ["", "## Which offline signal predicts real success (Spearman over every run)", "",
             "| signal | region | runs | rho | 95% bootstrap |", "|---|---|---|---|---|"]
    for s in summary["signals"]:
        rho = _signed(s["rho"]) if s["rho"] is not None else f"– ({s.get('reason')})"
        lines.append(f"| {s['signal']} | {s['region']} | {s['runs']} | {rho} | {_signed_ci(s['ci95'])} |")
    return lines


def write_table(out: Path, summary: dict[str, Any], cfg: StudyConfig, meta: dict[str, Any]) -> str:
    first, stop = cfg.scene_seeds
    seeds = cfg.training_seeds
    lines = [
        f"# otplug study ({cfg.split} split): closed-loop success on the reach-and-hold benchmark",
        "",
        f"Real demos: {cfg.real_episodes} episodes in region A only; sim demos: {cfg.sim_episodes} episodes over A "
        f"and B. Policy: small ACT (no pretrained weights), {cfg.steps} steps, {cfg.rows_per_step} BC rows per step "
        f"for every method (co-training: {cfg.batch_size} mixture rows, bc_source_weight {cfg.bc_source_weight}, + "
        f"{cfg.ot_batch_size} DTW pairs), lambda_ot {cfg.lambda_ot}, trained in "
        f"{'bf16 autocast + channels_last (OT plan float32)' if cfg.precision == 'bf16' else 'float32'}. Training seeds: {seeds[0]}..{seeds[-1]} "
        f"({len(seeds)}); evaluation: {cfg.eval_episodes} episodes per seed and cell on the {cfg.split} scenes "
        f"(episode seeds {first}..{stop - 1}), the same for every method and seed.",
        "",
    ]
    if len(seeds) < 2:
        lines += ["**One training seed: these numbers show the pipeline, not the effect. A seed fixes the data, not "
                  "the policy (floating point differs between machines), so they vary between machines and are "
                  "evidence neither way.**", ""]
    lines += _results(summary, cfg) + _comparisons(summary) + _gaps(summary) + _ends(summary, cfg) + _signals(summary)
    lines += ["", f"Measured on {meta.get('device', '?')}: this invocation took {meta.get('minutes', 0):.1f} min; "
              f"training {meta.get('train_minutes', 0):.1f} min summed over runs ({meta.get('jobs', 1)} side by side), "
              f"evaluation {meta.get('eval_minutes', 0):.1f} min; peak resident memory of one training or evaluation "
              f"process {meta.get('peak_rss_gib', 0):.2f} GiB.", ""]
    lines += provenance_lines(meta)
    lines += ["", "Recommended OT config (`cotrain-ot`):", "", "```json", json.dumps(RECOMMENDED_OT, indent=2), "```"]
    text = "\n".join(lines) + "\n"
    save_text(out / "study.md", text, "the study table")
    return text


def provenance_lines(meta: dict[str, Any]) -> list[str]:
    """What the numbers rest on (otplug.bench.study_provenance): the data's content hash, the environment, and a line
    when the runs span several environments."""
    env = meta.get("environment") or {}
    pk = env.get("packages") or {}
    libs = ", ".join(f"{k} {v}" for k, v in pk.items() if v and k != "otplug")
    hashes = meta.get("data_hashes") or {}
    lines = [f"Data: content hash {meta.get('data_hash', '?')} ("
             + ", ".join(f"{k} {str(v)[:12]}" for k, v in hashes.items()) + "; of the decoded frames and values)."
             if hashes else "Data: content hash not recorded.",
             f"Environment {meta.get('environment_key', '?')} (summarised here): {env.get('cpu', '?')}, "
             f"{env.get('cpu_capability', '?')} kernels, bf16 {'native' if env.get('cpu_bf16') else 'not native'}"
             + (f", GPU {env['cuda'].get('device')}" if env.get("cuda") else "") + f"; {libs}."]
    runs = meta.get("run_environments") or {}
    if runs:
        lines.append("Runs by environment: " + ", ".join(f"{k}: {n}" for k, n in runs.items()) + ".")
    if meta.get("environments_note"):
        lines.append(f"**Note: {meta['environments_note']}.**")
    return lines


def write_plot(out: Path, cells: list[dict[str, Any]], cfg: StudyConfig) -> Path:
    """Seed means with their t intervals (error bars) and the per-seed rates (dots), one group per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [(d, r) for d in cfg.eval_domains for r in cfg.eval_regions]
    by = {(c["method"], c["domain"], c["region"]): c for c in cells}
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 + 1.6 * len(cfg.methods)), 3.8), dpi=120)
    width = 0.8 / max(1, len(regions))
    colours = {("real", "A"): "#4C72B0", ("real", "B"): "#C44E52", ("sim", "A"): "#8DA0CB", ("sim", "B"): "#E78AC3"}
    for j, (d, r) in enumerate(regions):
        xs, ys, lo, hi, dots = [], [], [], [], []
        for i, m in enumerate(cfg.methods):
            c = by.get((m, d, r))
            if c is None:
                continue
            x = i + (j - (len(regions) - 1) / 2) * width
            xs.append(x)
            ys.append(c["mean"])
            ci = c["ci95"] or [c["mean"], c["mean"]]
            lo.append(max(0.0, c["mean"] - ci[0]))
            hi.append(max(0.0, ci[1] - c["mean"]))
            dots += [(x, v) for v in c["per_seed"].values()]
        colour = colours.get((d, r), "#999999")
        ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=3, label=f"{d} {r}", color=colour,
               hatch="//" if d == "sim" else None, edgecolor="white")
        if dots:
            ax.scatter([p[0] for p in dots], [p[1] for p in dots], s=6, c="black", alpha=0.5, zorder=3)
    ax.set_xticks(range(len(cfg.methods)), cfg.methods, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    seeds = f"{cfg.seeds} training seed" + ("s" if cfg.seeds != 1 else "")
    # three short lines: the two-method figure (make demo, --quick) is narrow
    ax.set_title(f"closed-loop success, {cfg.split} split: mean over {seeds}\nerror bars: 95% t interval over seeds; "
                 f"dots: one seed each\n({cfg.eval_episodes} episodes per seed and cell)", fontsize=8.5)
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "study.png"
    try:
        save_file(path, lambda tmp: fig.savefig(tmp, format="png"), "the study plot")
    finally:
        plt.close(fig)
    return path


def embedding_picture(feats: tuple[np.ndarray, np.ndarray], out: Path, title: str) -> Path:
    """PCA (:func:`otplug.stats.pca_2d`) of the ``(sim, real)`` image features of DTW-paired frames, by domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from otplug.stats import pca_2d

    src, tgt = feats
    xy, _var = pca_2d(np.concatenate([src, tgt]))
    n = len(src)
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=120)
    ax.scatter(xy[:n, 0], xy[:n, 1], s=12, c="#4C72B0", label="sim", alpha=0.8)
    ax.scatter(xy[n:, 0], xy[n:, 1], s=12, c="#C44E52", label="real", alpha=0.8)
    for i in range(0, n, max(1, n // 16)):
        ax.plot([xy[i, 0], xy[n + i, 0]], [xy[i, 1], xy[n + i, 1]], c="grey", lw=0.5, alpha=0.6)
    ax.set_title(title, fontsize=8, wrap=True)
    ax.legend(fontsize=8)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, lambda tmp: fig.savefig(tmp, format="png"), "the embedding picture")
    finally:
        plt.close(fig)
    return out
