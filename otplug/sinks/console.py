"""One readable line per logged step."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otplug.sinks.base import Sink, scalar_metrics

FIRST = ("bc_loss", "ot_loss", "loss", "ot_pi_sum", "ot_pi_diag", "grad_norm", "lr", "update_s")


class ConsoleSink(Sink):
    """Prints ``step N: bc_loss=... ot_loss=...`` (the first ``max_items`` metrics) to stderr or stdout."""

    def __init__(self, run_dir: Path, max_items: int = 10, stream: str = "stderr") -> None:
        super().__init__(run_dir)
        self.max_items = int(max_items)
        self.stream = sys.stderr if stream == "stderr" else sys.stdout

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        m = scalar_metrics(metrics)
        keys = [k for k in FIRST if k in m] + sorted(k for k in m if k not in FIRST)
        parts = [f"{k}={m[k]:.4g}" for k in keys[: self.max_items]]
        # write above a running tqdm bar when there is one
        try:
            from tqdm import tqdm

            tqdm.write(f"step {step}: " + " ".join(parts), file=self.stream)
        except ImportError:  # pragma: no cover
            print(f"step {step}: " + " ".join(parts), file=self.stream, flush=True)
