"""The sink protocol and a group that fans out to several sinks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Sink", "SinkGroup", "scalar_metrics"]


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Keep numbers only (bools become 0/1); tensors with one element are converted."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
            v = v.item()
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, int | float):
            out[k] = v
    return out


class Sink:
    """Base class: every method is optional to override."""

    def __init__(self, run_dir: Path, **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} takes no options, got {sorted(options)}")
        self.run_dir = Path(run_dir)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:  # pragma: no cover - interface
        pass

    def log_plan(self, step: int, plan: Any, labels: Mapping[str, Any] | None = None) -> None:
        pass

    def wants_plan(self, step: int) -> bool:
        """Whether ``log_plan`` would do something at this step (lets the trainer skip the copy)."""
        return False

    def close(self) -> None:
        pass


class SinkGroup:
    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = list(sinks)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for s in self.sinks:
            s.log(step, metrics)

    def wants_plan(self, step: int) -> bool:
        return any(getattr(s, "wants_plan", lambda _s: False)(step) for s in self.sinks)

    def log_plan(self, step: int, plan: Any, labels: Mapping[str, Any] | None = None) -> None:
        for s in self.sinks:
            if getattr(s, "wants_plan", lambda _s: True)(step):
                s.log_plan(step, plan, labels or {})

    def close(self) -> None:
        for s in self.sinks:
            s.close()

    def __iter__(self):
        return iter(self.sinks)
