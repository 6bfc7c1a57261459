"""The study's fixed settings: :class:`StudyConfig` (presets ``demo`` / ``quick``), the methods and the
recommended OT config."""

from __future__ import annotations

from typing import Any

import attrs

from otplug.errors import OtplugError

__all__ = ["CAMERA_KEY", "METHODS", "RECOMMENDED_OT", "StudyConfig", "StudyError"]

CAMERA_KEY = "observation.images.front"

#: The OT config of the ``cotrain-ot`` method (native format).
RECOMMENDED_OT: dict[str, Any] = {
    "reg": 0.05,
    "tau_src": 1.0,
    "tau_tgt": 1.0,
    "heuristic": True,
    "cost_normalization": "mean",
    "terms": [
        {"type": "image", "name": "img", "src_key": CAMERA_KEY, "weight": 1.0},
        {"type": "action-slice", "name": "action", "weight": 0.5},
    ],
}

METHODS = ("target-only", "source-only", "cotrain", "cotrain-ot", "cotrain-ot-noprior", "cotrain-ot-l2",
           "cotrain-ot-anchor")


class StudyError(OtplugError):
    """The study cannot run as asked (bad options, a folder from another study, a failed run)."""


@attrs.frozen
class StudyConfig:
    """Everything that fixes a study's results; a study folder refuses to continue with another one."""

    methods: tuple[str, ...] = METHODS
    seeds: int = 3
    real_episodes: int = 20
    sim_episodes: int = 100
    image_size: int = 32
    steps: int = 500
    batch_size: int = 16
    ot_batch_size: int = 8
    bc_source_weight: float = 0.5
    lambda_ot: float = 0.1
    eval_episodes: int = 200
    eval_domains: tuple[str, ...] = ("real",)
    eval_regions: tuple[str, ...] = ("A", "B")
    data_seed: int = 0

    @classmethod
    def demo(cls, **over: Any) -> StudyConfig:
        """``make demo``: co-training against co-training + OT, one seed (stated as such), ~5 min on a 2-core CPU."""
        base = dict(methods=("cotrain", "cotrain-ot"), seeds=1, steps=400, eval_episodes=100)
        return cls(**{**base, **over})

    @classmethod
    def quick(cls, **over: Any) -> StudyConfig:
        base = dict(methods=("target-only", "cotrain", "cotrain-ot"), seeds=1, steps=400, eval_episodes=100)
        return cls(**{**base, **over})
