"""Transport-plan heatmaps: ``<run_dir>/plans/plan_<step>.png`` every ``every`` steps (matplotlib, Agg)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otplug.atomic import save_file, writing
from otplug.errors import OtplugError
from otplug.sinks.base import Sink


def save_plan_png(path: Path, plan: Any, title: str = "", labels: Mapping[str, Any] | None = None) -> Path:
    """Write one plan picture: rows = source (sim) samples, columns = target (real) samples."""
    try:
        import matplotlib
    except ImportError as exc:
        raise OtplugError("the 'plan-heatmap' sink needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    p = np.asarray(plan, dtype=np.float64)
    if p.ndim != 2:
        raise OtplugError(f"plan-heatmap: expected a 2-D plan, got shape {p.shape}")
    labels = dict(labels or {})
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=100)
    im = ax.imshow(p, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel(labels.get("xlabel", "target (real) sample"))
    ax.set_ylabel(labels.get("ylabel", "source (sim) sample"))
    extra = f"  mass {p.sum():.3g}"
    if p.shape[0] == p.shape[1] and p.sum() > 0:
        extra += f", diag {np.trace(p) / p.sum():.0%}"
    ax.set_title((title + extra).strip(), fontsize=9)
    fig.tight_layout()
    try:
        with writing(path, "the plan picture"):
            path.parent.mkdir(parents=True, exist_ok=True)
        save_file(path, fig.savefig, "the plan picture")
    finally:
        plt.close(fig)
    return path


class PlanHeatmapSink(Sink):
    def __init__(self, run_dir: Path, every: int = 50, subdir: str = "plans") -> None:
        super().__init__(run_dir)
        if int(every) <= 0:
            raise OtplugError(f"plan-heatmap: 'every' must be > 0, got {every}")
        if importlib.util.find_spec("matplotlib") is None:  # say so at start-up, not at the first plan
            raise OtplugError("the 'plan-heatmap' sink needs matplotlib: pip install matplotlib")
        self.every = int(every)
        self.dir = self.run_dir / subdir
        self.written: list[Path] = []

    def wants_plan(self, step: int) -> bool:
        return step % self.every == 0

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def log_plan(self, step: int, plan: Any, labels: Mapping[str, Any] | None = None) -> None:
        self.written.append(save_plan_png(self.dir / f"plan_{int(step):06d}.png", plan, f"step {step}", labels))
