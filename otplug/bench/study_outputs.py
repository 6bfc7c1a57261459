"""What a study writes besides ``study.json``: ``study.md`` (the table), ``study.png`` (success with intervals)
and ``embeddings/<method>.png`` (PCA of the policy's image features of DTW-paired sim/real frames)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from otplug.atomic import save_file, save_text, writing
from otplug.bench.study_config import CAMERA_KEY, RECOMMENDED_OT, StudyConfig

__all__ = ["embedding_picture", "write_plot", "write_table"]


def write_table(out: Path, cells: list[dict[str, Any]], cfg: StudyConfig, meta: dict[str, Any]) -> str:
    regions = [(d, r) for d in cfg.eval_domains for r in cfg.eval_regions]
    head = "| method | " + " | ".join(f"{d} {r}" for d, r in regions) + " |"
    lines = [
        "# otplug study: closed-loop success on the reach benchmark",
        "",
        f"Real demos: {cfg.real_episodes} episodes in region A only; sim demos: {cfg.sim_episodes} episodes over A "
        f"and B. Policy: small ACT (no pretrained weights), {cfg.steps} steps, batch {cfg.batch_size}"
        f" (+{cfg.ot_batch_size} OT pairs for OT methods), bc_source_weight {cfg.bc_source_weight}, lambda_ot "
        f"{cfg.lambda_ot}. Seeds: {cfg.seeds} (training seeds 0..{cfg.seeds - 1}); evaluation: "
        f"{cfg.eval_episodes} episodes per seed and cell, the same episode seeds for every method.",
        "",
        "Success rate pooled over seeds and episodes, with a 95% Wilson interval; per-seed rates in brackets.",
        "",
        head,
        "|---" * (len(regions) + 1) + "|",
    ]
    by = {(c["method"], c["domain"], c["region"]): c for c in cells}
    for m in cfg.methods:
        row = [m]
        for d, r in regions:
            c = by.get((m, d, r))
            if c is None:
                row.append("-")
                continue
            lo, hi = c["ci95"]
            seeds = ", ".join(f"{x:.2f}" for x in c["per_seed"])
            row.append(f"**{c['success_rate']:.2f}** ({lo:.2f}-{hi:.2f}) [{seeds}]")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Measured on {meta.get('device', '?')}: this invocation took {meta.get('minutes', 0):.1f} min; "
              f"training {meta.get('train_minutes', 0):.1f} min summed over runs ({meta.get('jobs', 1)} side by side), "
              f"evaluation {meta.get('eval_minutes', 0):.1f} min; peak resident memory of one training or evaluation "
              f"process {meta.get('peak_rss_gib', 0):.2f} GiB.",
              "", "Recommended OT config (`cotrain-ot`):", "", "```json", json.dumps(RECOMMENDED_OT, indent=2), "```"]
    text = "\n".join(lines) + "\n"
    save_text(out / "study.md", text, "the study table")
    return text


def write_plot(out: Path, cells: list[dict[str, Any]], cfg: StudyConfig) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [(d, r) for d in cfg.eval_domains for r in cfg.eval_regions]
    by = {(c["method"], c["domain"], c["region"]): c for c in cells}
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 + 1.5 * len(cfg.methods)), 3.6), dpi=120)
    width = 0.8 / max(1, len(regions))
    colours = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    for j, (d, r) in enumerate(regions):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(cfg.methods):
            c = by.get((m, d, r))
            if c is None:
                continue
            xs.append(i + (j - (len(regions) - 1) / 2) * width)
            ys.append(c["success_rate"])
            lo.append(max(0.0, c["success_rate"] - c["ci95"][0]))
            hi.append(max(0.0, c["ci95"][1] - c["success_rate"]))
        ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=3, label=f"{d} {r}", color=colours[j % len(colours)])
    ax.set_xticks(range(len(cfg.methods)), cfg.methods, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(f"closed-loop success ({' and '.join(cfg.eval_domains)} domain)\n"
                 f"{cfg.seeds} seed(s) x {cfg.eval_episodes} episodes per cell", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "study.png"
    try:
        save_file(path, fig.savefig, "the study plot")
    finally:
        plt.close(fig)
    return path


def embedding_picture(ckpt: Path, paths: dict[str, Path], out: Path, title: str, loaded: Any) -> Path | None:
    """PCA of the policy's image features of real frames and their DTW sim partners, coloured by domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from otplug.lerobot.adapters import ACTEncoder
    from otplug.lerobot.datasets import open_dataset
    from otplug.lerobot.pair_dataset import partner_pairs

    if out.is_file():
        return out
    real = open_dataset("otplug/study_real_A", paths["real"])
    sim = open_dataset("otplug/study_sim_all", paths["sim"])
    _ds, idx, (src, tgt) = partner_pairs(real, sim, paths["pair_info"], 96)
    enc = ACTEncoder(loaded.policy)
    feats = []
    with torch.no_grad():
        for b in (src, tgt):
            x = loaded.preprocessor({CAMERA_KEY: b[CAMERA_KEY].float(), "observation.state": b["observation.state"]})
            feats.append(enc.encode_feature_for_ot(CAMERA_KEY, x[CAMERA_KEY]).flatten(1).double().cpu().numpy())
    all_f = np.concatenate(feats)
    centred = all_f - all_f.mean(0)
    _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    n = len(idx)
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
        with writing(out, "the embedding picture"):
            out.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, fig.savefig, "the embedding picture")
    finally:
        plt.close(fig)
    return out
