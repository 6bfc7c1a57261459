"""Alignment diagnostics while training: a fixed probe set of DTW pairs, measured every ``--ot.diag_every`` steps.

The probe set is ``PROBE_PAIRS`` real frames spread over the target dataset, each with its DTW partner (the
aligned frame of the closest sim episode, no jitter), through the same uint8 -> float step and preprocessor as
the training rows, built once under a forked RNG (so a run with diagnostics trains exactly like one without).
Every measurement encodes them with the policy's own image encoder (eval mode, no gradient) and reports
``diag/embed_scale``, ``diag/embed_scale_ratio`` (vs the first measurement), ``diag/effective_rank``,
``diag/domain_probe_acc`` (0.5 = sim and real indistinguishable) and ``diag/retrieval_at_1`` (+ cosine);
the embeddings are saved to ``embeddings/step_<step>.npz`` for ``otplug report`` (:mod:`otplug.diagnostics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from otplug.diagnostics import DiagnosticsRecorder
from otplug.errors import OtplugError
from otplug.lerobot.datasets import episode_lengths
from otplug.lerobot.pair_dataset import partner_pairs
from otplug.lerobot.train.batches import images_to_float
from otplug.policy_encoder import resolve_encoder, unwrap_policy

__all__ = ["PROBE_PAIRS", "make_recorder"]

PROBE_PAIRS = 64


def _probe_key(cfg: Any, camera_keys: list[str]) -> str | None:
    """The camera the diagnostics embed: the first image/embedding term's camera, else the first camera."""
    loss_cfg = cfg.ot.loss_config
    for spec in getattr(loss_cfg, "terms", ()):
        key = getattr(spec.options, "src_key", None)
        if key in camera_keys:
            return key
    return camera_keys[0] if camera_keys else None


def make_recorder(cfg: Any, dataset: Any, sources: list[Any], policy: Any, preprocessor: Any, output_dir: Path,
                  step: int) -> tuple[DiagnosticsRecorder, Any] | None:
    """``(recorder, encode_fn)`` for this run, or None when there is nothing to probe (no pairs, no camera,
    ``--ot.diag_every=0``, or a policy without an image encoder). With several sources the probe pairs come from
    the one with the largest weight (the first among equals)."""
    ot = cfg.ot
    key = _probe_key(cfg, list(dataset.meta.camera_keys))
    if not ot.active or ot.diag_every == 0 or key is None:
        return None
    try:
        encoder = resolve_encoder(unwrap_policy(policy))
    except OtplugError:
        return None  # a policy type without an encoder adapter: nothing to embed
    with torch.random.fork_rng():
        specs = ot.sources
        k = max(range(len(specs)), key=lambda n: (specs[n].weight, -n))
        source = sources[k]
        pairs, idx, (src, tgt) = partner_pairs(dataset, source, specs[k].pair_info, PROBE_PAIRS)
        cams = list(dataset.meta.camera_keys)
        src, tgt = (preprocessor(images_to_float(dict(b), cams)) for b in (src, tgt))
    t_len, s_len = episode_lengths(dataset), episode_lengths(source)
    tgt_phase, src_phase = [], []
    for i in idx:
        ep, frame = pairs.target_frame(i)
        tgt_phase.append(frame / max(1, t_len[ep] - 1))
        ep, frame = pairs.sample_source(i)
        src_phase.append(frame / max(1, s_len[ep] - 1))
    log_every = ot.log_every or cfg.log_freq
    every = max(1, -(-ot.diag_every // log_every) * log_every) if log_every > 0 else ot.diag_every
    recorder = DiagnosticsRecorder(output_dir, src, tgt, every=every, src_phase=np.asarray(src_phase),
                                   tgt_phase=np.asarray(tgt_phase), total_steps=cfg.steps, resume_step=step)

    def encode_fn(batch: dict) -> torch.Tensor:
        return encoder.encode_feature_for_ot(key, batch[key]).flatten(1)

    return recorder, encode_fn
