"""The report's pictures, as PNG bytes (matplotlib's object API on the Agg canvas: no pyplot, no global state)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from otplug.report.data import series
from otplug.stats import pca_2d  # its home; re-exported here

__all__ = ["CURVE_PANELS", "DIAG_PANELS", "curve_panel", "dtw_paths", "embedding_figure", "study_curves"]

SIM, REAL = "#4C72B0", "#C44E52"
PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD"]


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _log_y(ax: Any) -> None:
    """Log y axis labelled with plain numbers at 1, 2, 5 x 10^k (no cluttered minor-tick labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.08)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# curves over training steps

def _match(keys: Sequence[str], patterns: Sequence[str]) -> list[str]:
    out = []
    for p in patterns:
        if p.endswith("*"):
            out += [k for k in keys if k.startswith(p[:-1]) and k not in out]
        elif p in keys and p not in out:
            out.append(p)
    return out


#: (title, metric patterns, options) of the training-curve panels; a trailing ``*`` matches a prefix
CURVE_PANELS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("Behaviour-cloning loss", ["bc_loss"], {"ylabel": "bc_loss"}),
    ("OT loss", ["ot_loss"], {"ylabel": "ot_loss"}),
    ("Transport-plan mass", ["ot_pi_sum", "ot_pi_diag"], {"ylabel": "mass", "ymin": 0.0}),
    ("Share of BC rows from the source (sim)", ["bc_source_fraction"], {"ylabel": "fraction", "ylim": (0, 1.02)}),
]
DIAG_PANELS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("Domain probe and DTW-partner retrieval (probe set)",
     ["diag/domain_probe_acc", "diag/retrieval_at_1", "diag/retrieval_at_1_cosine"],
     {"ylabel": "accuracy / share", "ylim": (-0.02, 1.02), "hline": (0.5, "probe chance = 0.5")}),
    ("Embedding scale vs its first measurement (probe set)", ["diag/embed_scale_ratio"],
     {"ylabel": "ratio (log)", "log": True, "hline": (0.1, "collapse alarm = 0.1")}),
    ("Effective rank of the probe embeddings", ["diag/effective_rank"], {"ylabel": "effective rank", "ymin": 0.0}),
    ("Embedding scale (mean squared norm)", ["ot_embed_scale/*", "diag/embed_scale"], {"ylabel": "scale (log)",
                                                                                       "log": True}),
    ("Share of the OT cost per term", ["ot_cost_share/*"], {"ylabel": "share of M", "ylim": (-0.02, 1.02)}),
]


def panel_keys(keys: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return _match(keys, patterns)


def _smooth(v: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over ``n`` points ignoring NaNs (for noisy per-step losses)."""
    ok = np.isfinite(v)
    k = np.ones(n)
    num = np.convolve(np.where(ok, v, 0.0), k, mode="same")
    den = np.convolve(ok.astype(float), k, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def curve_panel(rows: list[Mapping[str, Any]], title: str, keys: Sequence[str], opts: Mapping[str, Any]) -> bytes:
    """One panel: each metric of ``keys`` over the steps (a smoothed line over the raw one when noisy)."""
    fig = _figure(5.6, 3.3)
    ax = fig.add_subplot()
    nonfinite = []
    positive = True
    for i, key in enumerate(keys):
        steps, vals = series(rows, key)
        colour = PALETTE[i % len(PALETTE)]
        if np.isnan(vals).any():
            nonfinite.append(key)
        finite = vals[np.isfinite(vals)]
        positive &= bool(finite.size == 0 or (finite > 0).all())
        label = key
        if len(vals) > 60:
            ax.plot(steps, vals, color=colour, lw=0.6, alpha=0.3)
            ax.plot(steps, _smooth(vals, max(3, len(vals) // 40)), color=colour, lw=1.6, label=label)
        else:
            ax.plot(steps, vals, color=colour, lw=1.4, marker="o" if len(vals) <= 30 else None, ms=3, label=label)
    want_log = opts.get("log")
    if want_log is None and "ylim" in opts:  # fixed limits (rates, probabilities): a linear axis
        want_log = False
    if want_log is None and len(keys) and positive:  # losses: log scale when they span decades
        allv = np.concatenate([series(rows, k)[1] for k in keys])
        allv = allv[np.isfinite(allv)]
        want_log = allv.size > 1 and allv.min() > 0 and allv.max() / allv.min() > 50
    if want_log and positive:
        _log_y(ax)
    if "hline" in opts:
        y, text = opts["hline"]
        ax.axhline(y, color="grey", ls="--", lw=1.0, label=text)
    if "ylim" in opts:
        ax.set_ylim(*opts["ylim"])
    elif "ymin" in opts and not (want_log and positive):
        ax.set_ylim(bottom=opts["ymin"])
    ax.set_xlabel("training step")
    ax.set_ylabel(opts.get("ylabel", ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(keys) > 1 or "hline" in opts or (keys and keys[0] != opts.get("ylabel")):
        ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
    if nonfinite:
        ax.text(0.01, 0.01, "gaps: non-finite values in " + ", ".join(nonfinite), transform=ax.transAxes,
                fontsize=7, color="#a00", va="bottom")
    return png(fig)


def study_curves(runs: Sequence[tuple[str, int, list[Mapping[str, Any]]]], key: str, title: str,
                 log: bool = False) -> bytes:
    """One metric for every run of a study, a colour per method."""
    fig = _figure(5.6, 3.3)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(m for m, _s, _r in runs))
    for method, seed, rows in runs:
        steps, vals = series(rows, key)
        if not len(vals):
            continue
        colour = PALETTE[methods.index(method) % len(PALETTE)]
        if len(vals) > 60:
            vals = _smooth(vals, max(3, len(vals) // 40))
        ax.plot(steps, vals, color=colour, lw=1.3, alpha=0.9, label=method if seed == min(
            s for m, s, _r in runs if m == method) else None)
    if log:
        _log_y(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
    return png(fig)


# ---------------------------------------------------------------------------------------------------------------------
# embeddings

def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of the rows of ``x`` (PCA-initialised, deterministic in ``seed``)."""
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if x.shape[1] > 50:  # the usual pre-reduction: t-SNE on the first 50 principal components
        c = x - x.mean(axis=0, keepdims=True)
        _u, _s, vt = np.linalg.svd(c, full_matrices=False)
        x = c @ vt[:50].T
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    # one thread: on shared cores OpenMP spin-waiting made this 10-37 s instead of 0.4 s (96 points, measured)
    with threadpool_limits(limits=1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed).fit_transform(x)


def _scatter_domain(ax: Any, xy: np.ndarray, n: int, pairs: int = 20) -> None:
    ax.scatter(xy[:n, 0], xy[:n, 1], s=14, c=SIM, marker="o", alpha=0.75, label="sim (source)", linewidths=0)
    ax.scatter(xy[n:, 0], xy[n:, 1], s=16, c=REAL, marker="^", alpha=0.75, label="real (target)", linewidths=0)
    for i in np.unique(np.linspace(0, n - 1, min(pairs, n)).astype(int)):
        ax.plot([xy[i, 0], xy[n + i, 0]], [xy[i, 1], xy[n + i, 1]], c="grey", lw=0.6, alpha=0.6)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.85, markerscale=1.3)


def _scatter_phase(ax: Any, fig: Any, xy: np.ndarray, n: int, phase: tuple[Any, Any]) -> None:
    sp, tp = phase
    if sp is None and tp is None:
        ax.text(0.5, 0.5, "episode phase not saved\nwith these embeddings", ha="center", va="center",
                transform=ax.transAxes, fontsize=9, color="#555")
        ax.scatter(xy[:, 0], xy[:, 1], s=8, c="#bbb", linewidths=0)
        return
    sc = None
    for part, p, marker, lab in ((slice(0, n), sp, "o", "sim"), (slice(n, 2 * n), tp, "^", "real")):
        if p is None:
            ax.scatter(xy[part, 0], xy[part, 1], s=10, c="#bbb", marker=marker, linewidths=0, label=f"{lab} (no phase)")
        else:
            sc = ax.scatter(xy[part, 0], xy[part, 1], s=16, c=p, cmap="viridis", vmin=0, vmax=1, marker=marker,
                            linewidths=0, label=lab)
    if sc is not None:
        cb = fig.colorbar(sc, ax=ax, fraction=0.05, pad=0.02)
        cb.set_label("episode phase (frame / length)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.85)


def embedding_figure(data: Mapping[str, Any], *, tsne: bool = True, max_pairs: int = 600) -> tuple[bytes, str]:
    """A 2 x 2 picture of one saved probe set: PCA and t-SNE (rows) coloured by domain and by episode phase
    (columns), with grey lines joining some DTW pairs. Returns ``(png, note)``; ``note`` says what was left out
    (t-SNE without scikit-learn, subsampling)."""
    src, tgt = data["src"], data["tgt"]
    n = src.shape[0]
    notes = []
    keep = np.arange(n)
    if n > max_pairs:
        keep = np.unique(np.linspace(0, n - 1, max_pairs).astype(int))
        notes.append(f"{len(keep)} of {n} pairs shown")
    src, tgt = src[keep], tgt[keep]
    sp = data.get("src_phase")
    tp = data.get("tgt_phase")
    phase = (None if sp is None else sp[keep], None if tp is None else tp[keep])
    n = len(keep)
    both = np.concatenate([src, tgt]).astype(np.float64)
    finite = np.isfinite(both).all()
    projections: list[tuple[str, np.ndarray | None, str]] = []
    if not finite:
        notes.append("embeddings hold non-finite values: no projection")
    else:
        xy, share = pca_2d(both)
        projections.append(("PCA", xy, f"PC 1 ({share[0]:.0%} of variance)|PC 2 ({share[1]:.0%})"))
        if tsne:
            try:
                projections.append(("t-SNE", tsne_2d(both), "t-SNE 1|t-SNE 2"))
            except ImportError:
                notes.append("t-SNE needs scikit-learn: pip install scikit-learn")
            except ValueError as exc:  # too few points for t-SNE
                notes.append(f"t-SNE skipped: {exc}")
    if not projections:
        fig = _figure(6, 1.2)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "; ".join(notes) or "nothing to project", ha="center", va="center", fontsize=10)
        return png(fig), "; ".join(notes)
    fig = _figure(10.5, 4.2 * len(projections))
    axes = fig.subplots(len(projections), 2, squeeze=False)
    for r, (name, xy, labels) in enumerate(projections):
        xl, yl = labels.split("|")
        a_dom, a_ph = axes[r]
        _scatter_domain(a_dom, xy, n)
        _scatter_phase(a_ph, fig, xy, n, phase)
        a_dom.set_title(f"{name}: by domain (grey lines join DTW pairs)", fontsize=9.5)
        a_ph.set_title(f"{name}: by episode phase (o sim, ^ real)", fontsize=9.5)
        for a in (a_dom, a_ph):
            a.set_xlabel(xl, fontsize=8.5)
            a.set_ylabel(yl, fontsize=8.5)
            a.tick_params(labelsize=7.5)
            a.grid(alpha=0.25)
    fig.tight_layout()
    return png(fig), "; ".join(notes)


# ---------------------------------------------------------------------------------------------------------------------
# DTW warping paths

def pick_spread(items: Sequence[Any], k: int) -> list[Any]:
    """Up to ``k`` items spread evenly over ``items`` (first and last included)."""
    if len(items) <= k:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def dtw_paths(pair_info: Mapping[str, list[Mapping[str, Any]]], episodes: Sequence[str], per_episode: int = 3) -> bytes:
    """One panel per target episode: the DTW warping path (target frame -> aligned source frames) of its closest
    source episode (bold) and the next ``per_episode - 1`` (light)."""
    k = len(episodes)
    cols = min(k, 4)
    rows_n = math.ceil(k / cols)
    fig = _figure(3.1 * cols + 0.4, 3.0 * rows_n + 0.3)
    axes = fig.subplots(rows_n, cols, squeeze=False)
    for j, ep in enumerate(episodes):
        ax = axes[j // cols][j % cols]
        entries = list(pair_info[ep])[:per_episode]
        for i, e in enumerate(entries):
            pts = [(int(t), int(s)) for t, ss in e["pairing"].items() for s in ss]
            if not pts:
                continue
            pts.sort()
            t, s = np.array(pts).T
            best = i == 0
            ax.plot(t, s, color=PALETTE[i % len(PALETTE)], lw=1.8 if best else 1.0, alpha=1.0 if best else 0.55,
                    marker="o" if best and len(t) <= 60 else None, ms=2.5,
                    label=f"sim ep {e['demo_name']} (d={float(e['raw_dtw_dist']):.3g})")
        ax.set_title(f"real episode {ep}", fontsize=9.5)
        ax.set_xlabel("target (real) frame", fontsize=8.5)
        ax.set_ylabel("source (sim) frame", fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    for j in range(k, rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    return png(fig)
