"""The study's fixed settings: :class:`StudyConfig` (presets ``demo`` / ``quick``), the methods, the splits. The OT
configs the methods use live in :mod:`otplug.recipes` (re-exported here)."""

from __future__ import annotations

from typing import Any

import attrs

from otplug.errors import OtplugError
from otplug.recipes import CAMERA_KEY, MMD_ENERGY, MMD_LINEAR, PLAIN_OT, POOL_JOINT_OT, POOL_OT, RECOMMENDED_OT

__all__ = ["ABLATIONS", "CAMERA_KEY", "DEFAULT_METHODS", "METHODS", "MMD_ENERGY", "MMD_LINEAR", "PLAIN_OT",
           "POOL_JOINT_OT", "POOL_METHODS", "POOL_OT", "RECOMMENDED_OT", "SPLITS", "SPLIT_SCENE_BASE", "SPLIT_TRAINING_SEED_BASE", "StudyConfig", "StudyError"]

#: Every method a study can run (``--methods`` picks a subset).
METHODS = ("target-only", "source-only", "cotrain", "cotrain-mmd", "cotrain-mmd-linear", "cotrain-ot",
           "cotrain-ot-plain", "cotrain-ot-noprior", "cotrain-ot-l2", "cotrain-ot-pool", "cotrain-mmd-pool",
           "cotrain-ot-joint-pool")

#: The methods whose alignment also sees the unlabelled real pool (``data/real_play``: a goal-blind scripted motion
#: over both regions, no actions; :func:`otplug.bench.record.record_play`). Their BC rows are co-training's: the pool
#: adds ``pool_rows`` target rows (and as many sim rows) to the OT batch only.
POOL_METHODS = ("cotrain-ot-pool", "cotrain-mmd-pool", "cotrain-ot-joint-pool")

#: The ablations: the recommended config before ``scale_anchor`` and the unit-length cost (its features collapse in
#: direction; docs/math.md §7.6). Run on request (``--methods``).
ABLATIONS = ("cotrain-ot-plain", "cotrain-ot-l2")

#: The full study's default: the question's four methods (SPEC §8.1) — target-only (what the real demos alone give),
#: co-training (the baseline to beat), the MMD baseline and the recommended OT config — over paired training seeds.
#: source-only and the OT variants run on request (``--methods``).
DEFAULT_METHODS = ("target-only", "cotrain", "cotrain-mmd", "cotrain-ot")

#: Evaluation scenes. Episode ``e`` of a split plays episode seed ``base + e``; the ranges are disjoint from each
#: other and from the scenes the demos were recorded on (real: ``data_seed + i``, sim: ``data_seed + 1000 + i``,
#: the held-out real demos: ``data_seed + 50_000 + i``). Every choice (config, lambda, steps, the task's knobs) is
#: made on ``dev``; ``test`` is for the final table, run once per set of choices (SPEC §8.1).
SPLITS = ("dev", "test")
SPLIT_SCENE_BASE = {"dev": 200_000, "test": 300_000}
SPLIT_SCENE_SPAN = 100_000  # at most this many evaluation episodes per cell
#: Training seeds: ``dev`` tunes on seeds 0, 1, ...; ``test`` trains fresh ones, 1000, 1001, ... that no choice saw.
SPLIT_TRAINING_SEED_BASE = {"dev": 0, "test": 1000}


#: ``StudyConfig.precision`` values; ``otplug study --precision auto`` picks bf16 where the device computes it natively
PRECISIONS = ("fp32", "bf16")
#: settings added after studies were run: a folder written before one existed ran with this value
SETTING_DEFAULTS = {"precision": "fp32", "pool_episodes": 40, "pool_rows": 8}


class StudyError(OtplugError):
    """The study cannot run as asked (bad options, a folder from another study, a failed run)."""


@attrs.frozen
class StudyConfig:
    """Everything that fixes a study's results; a study folder refuses to continue with another one."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = 10
    real_episodes: int = 20
    #: sim demos over A and B (chosen on dev, docs/benchmark.md: 100 left co-training at 0.21-0.30 in sim B; a sim
    #: costs nothing per demo, and 400 raised sim B to 0.42-0.58 at the same steps and step time)
    sim_episodes: int = 400
    image_size: int = 32
    steps: int = 1000
    batch_size: int = 16
    ot_batch_size: int = 8
    bc_source_weight: float = 0.75
    #: ACT's conditional VAE: off (the expert is deterministic; on dev it trained faster without, docs/benchmark.md)
    use_vae: bool = False
    lambda_ot: float = 0.1
    eval_episodes: int = 200
    eval_domains: tuple[str, ...] = ("real", "sim")
    eval_regions: tuple[str, ...] = ("A", "B")
    data_seed: int = 0
    split: str = attrs.field(default="dev", validator=attrs.validators.in_(SPLITS))
    #: held-out real demos (region A) for the offline signal "held-out real BC loss"
    heldout_episodes: int = 5
    #: the trainings' precision: ``fp32``, or ``bf16`` (``--policy.use_amp=true --ot.memory_format=channels_last``:
    #: bf16 autocast with channels_last conv weights; the OT plan stays float32). Evaluation is float32 either way.
    precision: str = attrs.field(default="fp32", validator=attrs.validators.in_(PRECISIONS))
    #: the unlabelled real pool of the ``*-pool`` methods: episodes of a goal-blind scripted motion (40 steps each)
    #: over both regions, recorded once per study folder on scenes of its own
    pool_episodes: int = 40
    #: pool rows per OT batch of the ``*-pool`` methods, beside the ``ot_batch_size`` DTW pairs
    pool_rows: int = 8

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.eval_episodes <= SPLIT_SCENE_SPAN:
            raise StudyError(f"--episodes must be in [1, {SPLIT_SCENE_SPAN}] (the size of a split's scene range), "
                             f"got {self.eval_episodes}")

    @property
    def rows_per_step(self) -> int:
        """BC rows every method trains on per step: the co-training methods' ``batch_size`` mixture rows plus the
        ``2 * ot_batch_size`` DTW-paired rows; the one-dataset methods get as many rows from their dataset."""
        return self.batch_size + 2 * self.ot_batch_size

    @property
    def scene_seeds(self) -> tuple[int, int]:
        """``[first, stop)`` episode seeds of this split's evaluation scenes."""
        base = SPLIT_SCENE_BASE[self.split]
        return base, base + self.eval_episodes

    @property
    def training_seeds(self) -> tuple[int, ...]:
        base = SPLIT_TRAINING_SEED_BASE[self.split]
        return tuple(range(base, base + self.seeds))

    @classmethod
    def demo(cls, **over: Any) -> StudyConfig:
        """``make demo``: co-training against co-training + OT, one seed (stated as such), ~5 min on a 2-core CPU."""
        base = dict(methods=("cotrain", "cotrain-ot"), seeds=1, eval_episodes=100, eval_domains=("real",))
        return cls(**{**base, **over})

    @classmethod
    def quick(cls, **over: Any) -> StudyConfig:
        base = dict(methods=("target-only", "cotrain", "cotrain-ot"), seeds=1, eval_episodes=100,
                    eval_domains=("real",))
        return cls(**{**base, **over})
