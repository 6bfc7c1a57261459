"""What a study measures of a trained policy without a simulator: the offline signals.

For each run, after training, on the final checkpoint:

* the alignment diagnostics of :mod:`otplug.diagnostics` (``domain_probe_acc``, ``retrieval_at_1``,
  ``embed_scale``, ``effective_rank``) on a fixed probe set: 96 real frames spread over the real demos and their
  DTW sim partners, embedded by the policy's own image encoder (found through the encoder registry, as training
  does);
* ``heldout_real_bc_loss``: the policy's BC loss (ACT: the L1 action-chunk loss, eval mode) on real demos of
  region A that no run trained on (``data/real_A_heldout``, other scenes);
* ``ot_loss``: the mean OT loss over the run's last logged window (OT methods only);
* ``embed_scale_ratio``: the image features' scale at the end over their scale at the start of training, from the
  run's own diagnostics (``diag/embed_scale_ratio`` in ``metrics.jsonl``; runs with pairs only).

A user without a simulator of their robot has exactly these numbers to choose lambda; the study reports how well each
ranks the runs by real-domain success (Spearman, over every run; :func:`otplug.stats.rank_correlation`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from otplug.bench.env import CAMERA_KEY

__all__ = ["OFFLINE_SIGNALS", "heldout_bc_loss", "offline_signals", "probe_features"]

#: the signals, in the order the study reports them
OFFLINE_SIGNALS = ("domain_probe_acc", "retrieval_at_1", "embed_scale_ratio", "heldout_real_bc_loss", "ot_loss")
PROBE_PAIRS = 96


def probe_features(loaded: Any, paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """``(sim, real)`` image features (float64, one row per probe pair) of the fixed DTW probe set."""
    import torch

    from otplug.lerobot.datasets import images_to_float, open_dataset
    from otplug.lerobot.pair_dataset import partner_pairs
    from otplug.policy_encoder import resolve_encoder

    real = open_dataset("otplug/study_real_A", paths["real"])
    sim = open_dataset("otplug/study_sim_all", paths["sim"])
    _ds, _idx, (src, tgt) = partner_pairs(real, sim, paths["pair_info"], PROBE_PAIRS)
    encoder = resolve_encoder(loaded.policy)
    feats = []
    with torch.no_grad():
        for b in (src, tgt):
            # a video dataset's rows are uint8: [0, 1] floats, as training feeds the policy
            x = loaded.preprocessor(images_to_float({CAMERA_KEY: b[CAMERA_KEY], "observation.state":
                                                     b["observation.state"]}, [CAMERA_KEY]))
            feats.append(encoder.encode_feature_for_ot(CAMERA_KEY, x[CAMERA_KEY]).flatten(1).double().cpu().numpy())
    return feats[0], feats[1]


def heldout_bc_loss(loaded: Any, root: Path, batch_size: int = 64) -> float:
    """Mean BC loss of the policy (eval mode) over every frame of the held-out real dataset at ``root``."""
    import torch
    from lerobot.datasets.factory import resolve_delta_timestamps

    from otplug.lerobot.datasets import images_to_float, open_dataset

    probe = open_dataset("otplug/study_real_A_heldout", root)
    delta = resolve_delta_timestamps(loaded.policy.config, probe.meta)
    ds = open_dataset("otplug/study_real_A_heldout", root, delta_timestamps=delta)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    policy = loaded.policy
    policy.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            rows = len(batch["index"])
            batch = loaded.preprocessor(images_to_float(batch, ds.meta.camera_keys))
            loss, _ = policy.forward(batch)
            total += float(loss) * rows
            n += rows
    return total / max(n, 1)


def _last_logged(run_dir: Path, key: str) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    value = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
        v = row.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            value = float(v)
    return value


def offline_signals(loaded: Any, paths: dict[str, Path], run_dir: Path,
                    feats: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float | None]:
    """Every signal of :data:`OFFLINE_SIGNALS` for one trained run (None where a run has no such number)."""
    from otplug.diagnostics import alignment_diagnostics

    src, tgt = feats if feats is not None else probe_features(loaded, paths)
    diag = alignment_diagnostics(src, tgt)
    out: dict[str, float | None] = {
        "domain_probe_acc": diag.get("diag/domain_probe_acc"),
        "retrieval_at_1": diag.get("diag/retrieval_at_1"),
        "embed_scale": diag.get("diag/embed_scale"),
        "effective_rank": diag.get("diag/effective_rank"),
        "embed_scale_ratio": _last_logged(run_dir, "diag/embed_scale_ratio"),
        "heldout_real_bc_loss": heldout_bc_loss(loaded, paths["heldout"]) if "heldout" in paths else None,
        "ot_loss": _last_logged(run_dir, "ot_loss"),
    }
    return {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in out.items()}
