"""``metrics.jsonl``: one JSON object per logged step (always on in training)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otplug.sinks.base import Sink, scalar_metrics


class JsonlSink(Sink):
    """Appends ``{"step": ..., **metrics}`` rows to ``<run_dir>/<filename>`` (flushed every row)."""

    def __init__(self, run_dir: Path, filename: str = "metrics.jsonl") -> None:
        super().__init__(run_dir)
        self.path = self.run_dir / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        row: dict[str, Any] = {"step": int(step)}
        for k, v in scalar_metrics(metrics).items():
            row[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN / inf
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
