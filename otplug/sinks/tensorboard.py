"""TensorBoard event files under ``<run_dir>/tensorboard``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otplug.errors import OtplugError
from otplug.sinks.base import Sink, scalar_metrics


class TensorBoardSink(Sink):
    """Scalars (and the plan image every ``plan_every`` steps). ``start_step = N > 0`` (a resumed run) hides the
    events the interrupted run wrote after step N (``SummaryWriter(purge_step=N + 1)``)."""

    def __init__(self, run_dir: Path, subdir: str = "tensorboard", plan_every: int = 0, start_step: int = 0) -> None:
        super().__init__(run_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise OtplugError("the 'tensorboard' sink needs the tensorboard package: pip install tensorboard") from exc
        purge = int(start_step) + 1 if int(start_step) > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.run_dir / subdir), purge_step=purge)
        self.plan_every = int(plan_every)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in scalar_metrics(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def wants_plan(self, step: int) -> bool:
        return self.plan_every > 0 and step % self.plan_every == 0

    def log_plan(self, step: int, plan: Any, labels: Mapping[str, Any] | None = None) -> None:
        import numpy as np

        p = np.asarray(plan, dtype=np.float32)
        if p.max() > 0:
            p = p / p.max()
        self.writer.add_image("ot/plan", p[None], step, dataformats="CHW")

    def close(self) -> None:
        self.writer.close()
