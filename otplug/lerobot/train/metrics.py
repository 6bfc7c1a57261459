"""Metrics of the training loop: the log window, the cross-process reduction, the finiteness vote."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["MAX_REDUCED", "SUMMED", "Window", "finite_everywhere", "reduce_metrics"]

#: timings are reduced by max (the slowest process sets the pace); everything else by mean
MAX_REDUCED = ("update_s", "dataloading_s")
#: counters: a log window reports their sum, not their mean
SUMMED = ("skipped_steps",)


class Window:
    """Averages scalar metrics over a log window (lerobot averages too); counters (:data:`SUMMED`) are summed.
    Booleans and non-numbers are skipped."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: Mapping[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.sums[k] += float(v)
                self.counts[k] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] if k in SUMMED else self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


def reduce_metrics(metrics: dict[str, float], accelerator: Any) -> dict[str, float]:
    """Average across processes (timings: max); every process must call it. Adds ``world_size`` when > 1."""
    if accelerator is None or accelerator.num_processes == 1:
        return metrics
    import torch.distributed as dist

    gathered: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, metrics)
    out: dict[str, float] = {}
    for k in sorted({k for g in gathered for k in g}):
        vals = [g[k] for g in gathered if k in g]
        out[k] = max(vals) if k in MAX_REDUCED else sum(vals) / len(vals)
    out["world_size"] = accelerator.num_processes
    return out


def finite_everywhere(value: float, accelerator: Any) -> bool:
    """``value`` is finite on every process. All processes take part, so a divergence on one of them stops
    every one of them at the same step instead of leaving the others waiting in the next collective."""
    finite = math.isfinite(value)
    if accelerator is None or accelerator.num_processes == 1:
        return finite
    bad = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
    return float(accelerator.reduce(bad, reduction="sum").item()) == 0.0
