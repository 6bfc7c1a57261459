"""The ``otplug train`` config: lerobot's :class:`TrainPipelineConfig` plus an ``ot`` section.

Every ``lerobot-train`` option works unchanged (``--dataset.repo_id``, ``--policy.type``, ``--batch_size``,
``--steps``, ...). The OT options live under ``--ot.*``; see :class:`OTSection`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs.train import TrainPipelineConfig

__all__ = ["LAYOUTS", "SCOPES", "OTSection", "OTTrainConfig"]

LAYOUTS = ("single-pass", "separate")
SCOPES = ("rank", "global")


@dataclass
class OTSection:
    # Turn the OT loss on/off. Off (or lambda_ot = 0) means plain lerobot-train: no OT batch is loaded.
    enabled: bool = True
    # OT config file (TOML / YAML / JSON, native or seed format; `otplug check-config FILE`).
    config: str | None = None
    # total = bc_loss + lambda_ot * ot_loss
    lambda_ot: float = 0.1
    # The source (sim) LeRobot dataset; the BC dataset (--dataset.*) is the target (real) side.
    source_repo_id: str | None = None
    source_root: str | None = None
    # DTW pairings between target and source episodes (`otplug pair ... --out pair_info.json`).
    pair_info: str | None = None
    # single-pass: the BC batch is [src | tgt | bc] rows and OT embeddings are captured from the BC forward
    # (recommended); separate: an OT dataloader beside the BC dataloader, encoded in extra forward passes.
    layout: str = "single-pass"
    # OT pairs (src/tgt rows) per step and process.
    batch_size: int = 8
    # rank: each process solves OT on its own pairs; global: the plan covers the pairs of all processes.
    scope: str = "rank"
    # Cross-dataloader alignment policy (separate layout): `otplug list-alignments`.
    alignment: str = "rank"
    # Pair sampling (see otplug.lerobot.pair_dataset.PairSampling).
    # source-episode weight: logistic (ot-sim2real) | exp (earlier implementation) | uniform
    weighting: str = "logistic"
    sharpness: float | None = None
    cutoff: float | None = None
    top_k: int | None = None
    window_size: int | None = None
    no_window: bool = False
    # Normalise with statistics aggregated over target + source (lerobot's aggregate_stats).
    combine_stats: bool = True
    # single-pass keys whose embedding cannot be captured: "encode" (extra forward on those rows, with a
    # warning and the metric ot_capture_fallback) or "error".
    capture_fallback: str = "encode"
    # Ablation: load the pairs as BC rows (single-pass layout) but add no OT loss.
    cotrain_only: bool = False
    # Metric sinks besides metrics.jsonl (always on): console, tensorboard, wandb, plan-heatmap, ...
    sinks: list[str] = field(default_factory=lambda: ["console", "plan-heatmap"])
    # Transport-plan pictures every N steps (plan-heatmap sink).
    plan_every: int = 50
    # Log metrics every N steps (defaults to --log_freq).
    log_every: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.enabled) and (self.lambda_ot > 0 or self.cotrain_only)


@dataclass
class OTTrainConfig(TrainPipelineConfig):
    ot: OTSection = field(default_factory=OTSection)
