"""The study's fixed settings: :class:`StudyConfig` (presets ``demo`` / ``quick``), the methods and the
recommended OT config."""

from __future__ import annotations

from typing import Any

import attrs

from otplug.errors import OtplugError

__all__ = ["ABLATIONS", "CAMERA_KEY", "DEFAULT_METHODS", "METHODS", "MMD_LINEAR", "PLAIN_OT", "RECOMMENDED_OT", "StudyConfig",
           "StudyError"]

CAMERA_KEY = "observation.images.front"

#: The plain OT config (``cotrain-ot-plain``): the recommended config before ``scale_anchor``; the image
#: embedding's scale collapses under it (docs/math.md §7, docs/benchmark.md).
PLAIN_OT: dict[str, Any] = {
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

#: The OT config of the ``cotrain-ot`` method and of the demos (native format): the plain config with the image
#: features' scale held (``scale_anchor = 1``). Chosen from measurements: closed loop over 5 seeds, real A / B
#: 0.60 / 0.41 against the plain config's 0.51 / 0.41 (docs/benchmark.md), and on the embedding demo the scale
#: held at 1.0x its start where the plain cost shrank it 60x (docs/math.md §7.6).
RECOMMENDED_OT: dict[str, Any] = {
    **PLAIN_OT,
    "terms": [{**t, "scale_anchor": 1.0} if t["type"] == "image" else t for t in PLAIN_OT["terms"]],
}

#: The MMD baseline (``cotrain-mmd``): a linear-kernel MMD between the sim and real image features,
#: ``|mean(f_sim) - mean(f_real)|^2`` divided by the mean pairwise cost (mean-embedding matching, as Deep Domain
#: Confusion). It is the debiased loss S (docs/math.md §7.5) at a ``reg`` and ``tau`` far above the (normalised)
#: costs: the plans become ``a b^T`` and S tends to the squared distance of the means (Feydy et al. 2019; tested in
#: tests/test_collapse_proof.py). The DTW pairing is not used; the image scale is held as in the recommended config.
MMD_LINEAR: dict[str, Any] = {
    "reg": 1000.0,
    "tau_src": 1.0e6,
    "tau_tgt": 1.0e6,
    "heuristic": False,
    "debias": True,
    "cost_normalization": "mean",
    "terms": [{"type": "image", "name": "img", "src_key": CAMERA_KEY, "weight": 1.0, "scale_anchor": 1.0}],
}

#: Every method a study can run (``--methods`` picks a subset).
METHODS = ("target-only", "source-only", "cotrain", "cotrain-mmd", "cotrain-ot", "cotrain-ot-plain",
           "cotrain-ot-noprior", "cotrain-ot-l2")

#: The ablations: the recommended config before ``scale_anchor`` and the unit-length cost (its features collapse in
#: direction; docs/math.md §7.6). Run on request (``--methods``).
ABLATIONS = ("cotrain-ot-plain", "cotrain-ot-l2")

#: The full study's default: the baselines, the MMD baseline, the recommended OT config and its variant without the
#: prior. 6 methods x 3 seeds took 36.5 min on the 2-core CPU (budget 45; docs/benchmark.md).
DEFAULT_METHODS = tuple(m for m in METHODS if m not in ABLATIONS)


class StudyError(OtplugError):
    """The study cannot run as asked (bad options, a folder from another study, a failed run)."""


@attrs.frozen
class StudyConfig:
    """Everything that fixes a study's results; a study folder refuses to continue with another one."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = 3
    real_episodes: int = 20
    sim_episodes: int = 100
    image_size: int = 32
    steps: int = 400
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
        base = dict(methods=("cotrain", "cotrain-ot"), seeds=1, eval_episodes=100)
        return cls(**{**base, **over})

    @classmethod
    def quick(cls, **over: Any) -> StudyConfig:
        base = dict(methods=("target-only", "cotrain", "cotrain-ot"), seeds=1, eval_episodes=100)
        return cls(**{**base, **over})
