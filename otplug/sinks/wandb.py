"""Weights & Biases (off by default, never required: ``pip install wandb`` to use it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otplug.errors import OtplugError
from otplug.sinks.base import Sink, scalar_metrics


class WandbSink(Sink):
    def __init__(self, run_dir: Path, project: str = "otplug", entity: str | None = None, name: str | None = None,
                 mode: str | None = None, plan_every: int = 0) -> None:
        super().__init__(run_dir)
        try:
            import wandb
        except ImportError as exc:
            raise OtplugError(
                "the 'wandb' sink was selected but wandb is not installed; `pip install wandb` "
                "(or `pip install otplug[wandb]`), or drop 'wandb' from the sinks"
            ) from exc
        self._wandb = wandb
        self.run = wandb.init(project=project, entity=entity, name=name, mode=mode, dir=str(self.run_dir))
        self.plan_every = int(plan_every)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log(scalar_metrics(metrics), step=step)

    def wants_plan(self, step: int) -> bool:
        return self.plan_every > 0 and step % self.plan_every == 0

    def log_plan(self, step: int, plan: Any, labels: Mapping[str, Any] | None = None) -> None:
        import numpy as np

        self.run.log({"ot/plan": self._wandb.Image(np.asarray(plan, dtype=np.float32))}, step=step)

    def close(self) -> None:
        self.run.finish()
