"""The project's OT configs by name: the recommended one, its ablation and the MMD baselines (native format).

One home for what the CLI's demo, the training demo (``otplug train --demo``) and the study (``otplug study``)
train with, so none of them imports another for it. Each is chosen from measurements: docs/benchmark.md lists the
dev-split numbers behind each choice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CAMERA_KEY", "MMD_ENERGY", "MMD_LINEAR", "PLAIN_OT", "POOL_JOINT_OT", "POOL_OT", "RECOMMENDED_OT"]

#: The reach task's one camera (``otplug.bench.env`` renders it; the demo datasets store it under this key).
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

#: The MMD baseline of the paper (``cotrain-mmd``): the energy distance between the sim and real image features,
#: ``E|f_s - f_r| - E|f_s - f_s'|/2 - E|f_r - f_r'|/2`` (the MMD of the distance kernel; geomloss's
#: ``SamplesLoss("energy")``, which the reference implementation calls). It is the debiased loss S (docs/math.md §7.5)
#: with the Euclidean (not squared) cost at a ``reg`` and ``tau`` far above the (normalised) costs, where the plans
#: become ``a b^T`` (tested against geomloss in tests/test_collapse_proof.py). The DTW pairing is not used; the image
#: scale is held as in the recommended config.
MMD_ENERGY: dict[str, Any] = {
    "reg": 1000.0,
    "tau_src": 1.0e6,
    "tau_tgt": 1.0e6,
    "heuristic": False,
    "debias": True,
    "cost_normalization": "mean",
    "terms": [{"type": "image", "name": "img", "src_key": CAMERA_KEY, "weight": 1.0, "scale_anchor": 1.0,
               "distance": "euclidean"}],
}

#: The linear-kernel MMD (``cotrain-mmd-linear``): ``|mean(f_sim) - mean(f_real)|^2`` divided by the mean pairwise
#: cost (mean-embedding matching, as Deep Domain Confusion): the same debiased loss with the squared cost.
MMD_LINEAR: dict[str, Any] = {
    **MMD_ENERGY,
    "terms": [{"type": "image", "name": "img", "src_key": CAMERA_KEY, "weight": 1.0, "scale_anchor": 1.0}],
}

#: OT with a target pool (``cotrain-ot-pool``): the recommended config's image term alone -- its action term reads the
#: real actions a pool does not have -- on the raw cost (``cost_normalization = "none"``), with only the real side's
#: features moving (``grad = "target"``) towards sim features from an EMA copy of the policy (``stopgrad_encoder =
#: "ema"``). The DTW pairs keep the diagonal prior; the pool rows and the sim rows drawn for them are one block solved
#: with the product prior (docs/math.md §9). Dev history (docs/benchmark.md): round 1, mean-normalised, the compared
#: features collapsed to one point (the detached 1/mean amplifies the pull); round 2, raw cost, they still collapsed
#: (both sides moving towards the plan's mean partner); round 3: the sim side held by the EMA target.
POOL_OT: dict[str, Any] = {
    **RECOMMENDED_OT,
    "cost_normalization": "none",
    "terms": [{**t, "grad": "target", "stopgrad_encoder": "ema"} for t in RECOMMENDED_OT["terms"]
              if t["type"] == "image"],
}

#: The joint-cost variant (``cotrain-ot-joint-pool``): the image term plus the ``joint`` term's label part (DeepJDOT /
#: JUMBOT for policies, docs/math.md §8): a sim row's action chunk against the policy's predicted chunk on the real
#: frame -- it needs no real actions, so it reaches the pool rows. The prediction is a constant here
#: (``stopgrad_prediction``): the label part chooses *which* sim frames a real frame is transported to (those whose
#: actions the policy would take there), the image term pulls their features together. With the gradient into the
#: prediction (DeepJDOT's form) the pseudo-labels pulled real-A success from 0.38 to 0.21 on dev (round 1). Its
#: feature part is off (``weight_embed = 0``): the image term, with its scale held, is the feature distance; the label
#: part, constant for autograd, dominates M's mean, so the mean normalisation does not amplify the image gradient.
POOL_JOINT_OT: dict[str, Any] = {
    **RECOMMENDED_OT,
    "terms": [*(t for t in RECOMMENDED_OT["terms"] if t["type"] == "image"), {"type": "joint", "name": "joint", "src_key": CAMERA_KEY, "weight": 0.5,
                                  "weight_embed": 0.0, "weight_label": 1.0, "stopgrad_prediction": True}],
}
