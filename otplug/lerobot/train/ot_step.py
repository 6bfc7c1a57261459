"""The OT side of a training step: pair loader, loss, capture and alignment (:class:`OTSide`).

Per step, :meth:`OTSide.build_batch` puts ``ot.batch_size`` pairs in front of the BC rows (single-pass layout,
``[src | tgt | bc]``) and :meth:`OTSide.loss` computes ``ot_loss`` after the policy's forward:

* single-pass: the src/tgt rows of the preprocessed batch, embeddings served from the BC forward by
  :class:`~otplug.lerobot.capture.CapturedEncoder` (rows ``[0, n)`` and ``[n, 2n)``);
* separate: a batch of pairs of its own, through the same uint8->float step and preprocessor instance, aligned to
  the BC batch by the alignment policy, encoded in extra forward passes.

The scope (``rank`` / ``global``) is applied in one place, :func:`scoped_ot`.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

import otplug
from otplug.atomic import writing
from otplug.distributed import scoped_ot
from otplug.ema import EMAEncoder
from otplug.errors import OtplugError
from otplug.lerobot.capture import CapturedEncoder, FeatureCapture
from otplug.lerobot.datasets import base_key
from otplug.lerobot.pair_dataset import PairSampling, cycle_epochs, make_pair_loader
from otplug.lerobot.pair_mixture import make_pairs
from otplug.lerobot.train.batches import check_image_range, concat_batches, images_to_float, rows
from otplug.plugins import get_registry
from otplug.policy_encoder import resolve_encoder, unwrap_policy

__all__ = ["OTSide", "make_sampling"]


def make_sampling(ot: Any) -> PairSampling:
    """The pair sampling options of the ``ot`` section (unset options keep :class:`PairSampling`'s defaults)."""
    wanted = {"mode": ot.weighting, "sharpness": ot.sharpness, "cutoff": ot.cutoff, "top_k": ot.top_k,
              "window_size": ot.window_size, "no_window": ot.no_window}
    try:
        return PairSampling(**{k: v for k, v in wanted.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise OtplugError(f"--ot sampling options: {exc}") from exc


def pair_workers(ot: Any, bc_workers: int) -> int:
    """Worker processes of the OT pair loader: ``--ot.num_workers`` when set; none on machines with <= 4 cores
    (each worker holds a copy of both datasets, ~1 GB with video); else half the BC loader's."""
    if ot.num_workers is not None:
        return ot.num_workers
    return 0 if (os.cpu_count() or 1) <= 4 else bc_workers // 2


class OTSide:
    """Everything the OT loss needs in the loop: pair loader, loss, capture, alignment."""

    def __init__(self, cfg: Any, dataset: Any, sources: list[Any], policy: Any, preprocessor: Any, accelerator: Any,
                 start_step: int) -> None:
        ot = cfg.ot
        self.ot = ot
        self.accelerator = accelerator
        self.camera_keys = list(dataset.meta.camera_keys)
        self.preprocessor = preprocessor
        self.layout = ot.layout
        self.scope = ot.scope
        rank = accelerator.process_index
        self.pair_dataset = make_pairs(dataset, sources, ot.sources, make_sampling(ot),
                                       seed=(cfg.seed or 0) + 7919 * rank)
        gen = torch.Generator()
        gen.manual_seed((cfg.seed or 0) * 1_000_003 + start_step + 104_729 * rank)
        self.loader = make_pair_loader(self.pair_dataset, ot.batch_size, pair_workers(ot, cfg.num_workers), gen)
        if len(self.loader) == 0:
            raise OtplugError(f"--ot.batch_size={ot.batch_size} is larger than the OT pair dataset "
                              f"({len(self.pair_dataset)} target frames)")
        self._pairs = cycle_epochs(self.pair_dataset, self.loader)
        self._last_pairs: tuple[dict, dict] | None = None  # the separate layout's last pairs (a step's recomputation)
        pcfg = unwrap_policy(policy).config
        self.policy_inputs = sorted(set(pcfg.input_features) | set(pcfg.output_features))
        self.loss_fn = otplug.OTLoss(ot.loss_config) if ot.has_loss else None
        self.capture: FeatureCapture | None = None
        self.fallback_keys: list[str] = []
        self.alignment = None
        self.encoder = None
        self.ema: EMAEncoder | None = None
        if self.loss_fn is None:
            return
        self.src_keys = sorted(self.loss_fn.required_keys("src") | self.loss_fn.optional_keys("src"))
        self.tgt_keys = sorted(self.loss_fn.required_keys("tgt") | self.loss_fn.optional_keys("tgt"))
        self._check_features(dataset.meta.features)
        embed_keys = sorted(self.loss_fn.embedding_keys)
        self.encoder = resolve_encoder(policy) if embed_keys else None
        if self.layout == "single-pass" and embed_keys:
            own = hasattr(unwrap_policy(policy), "encode_feature_for_ot")
            self.capture = FeatureCapture(None if own else self.encoder, embed_keys)
            self._plan_fallback(self.capture.unsupported, accelerator.is_main_process)
        if self.loss_fn.needs_ema_encoder:
            # a slowly updated copy of the policy gives the stop-gradient side's features (ROT's target encoder)
            self.ema = EMAEncoder(policy, decay=self.loss_fn.config.ema_decay)
        if self.layout == "separate":
            factory = get_registry().get("alignment", ot.alignment, field="--ot.alignment").load()
            self.alignment = factory()

    def _check_features(self, features: Any) -> None:
        for key in sorted(set(self.src_keys) | set(self.tgt_keys)):
            base = base_key(key)
            if base not in features:
                raise OtplugError(f"the OT config uses {key!r} but the dataset has no feature {base!r} "
                                  f"(features: {', '.join(sorted(features))})")

    def _plan_fallback(self, unsupported: dict[str, str], is_main: bool) -> None:
        if not unsupported:
            return
        if self.ot.capture_fallback == "error":
            raise OtplugError("single-pass layout cannot capture " + "; ".join(
                f"{k}: {why}" for k, why in unsupported.items()) + " (use --ot.capture_fallback=encode or "
                "--ot.layout=separate)")
        self.fallback_keys = sorted(unsupported)
        if is_main:
            warnings.warn(f"single-pass layout: no capture hook for {self.fallback_keys}; those embeddings are "
                          "computed by an extra encoder pass on the OT rows (metric ot_capture_fallback)", stacklevel=2)

    @property
    def single_pass(self) -> bool:
        return self.layout == "single-pass"

    def next_pairs(self) -> tuple[dict, dict]:
        src, tgt = next(self._pairs)
        return dict(src), dict(tgt)

    def build_batch(self, bc_batch: dict) -> tuple[dict, int]:
        """Single-pass: ``[src | tgt | bc]`` rows, every part through the uint8->float step first (one decoding
        path whatever the storage); returns the batch and the number of pairs ``n``. Separate: the BC batch."""
        if not self.single_pass:
            return images_to_float(bc_batch, self.camera_keys), 0
        src, tgt = self.next_pairs()
        n = len(next(v for v in src.values() if isinstance(v, torch.Tensor)))
        parts = [images_to_float(p, self.camera_keys) for p in (src, tgt, bc_batch)]
        return concat_batches(parts, required=self.policy_inputs), n

    def loss(self, batch: dict, n: int, policy: Any, device: torch.device, *, replay: bool = False) -> Any:
        """The OT result of this step (``None`` without an OT loss). ``batch`` is the preprocessed batch the policy
        was just run on; ``n`` as returned by :meth:`build_batch`. ``replay``: the same pairs as the last call (the
        separate layout draws new ones otherwise), to recompute a step."""
        if self.loss_fn is None:
            return None
        if self.single_pass:
            res = self._single_pass_loss(batch, n)
        else:
            res = self._separate_loss(batch, policy, device, replay=replay)
        res.metrics["ot_capture_fallback"] = float(len(self.fallback_keys))
        return res

    def _single_pass_loss(self, batch: dict, n: int) -> Any:
        sides = {"src": slice(0, n), "tgt": slice(n, 2 * n)}
        src, tgt = rows(batch, self.src_keys, sides["src"]), rows(batch, self.tgt_keys, sides["tgt"])
        encoder = None
        if self.capture is not None:
            encoder = CapturedEncoder(self.capture, sides, fallback=self.encoder if self.fallback_keys else None)
        return scoped_ot(self.loss_fn, src, tgt, encoder=encoder, scope=self._scope(), ema_encoder=self.ema)

    def _separate_loss(self, bc_batch: dict, policy: Any, device: torch.device, replay: bool = False) -> Any:
        pairs = self._last_pairs if replay and self._last_pairs is not None else self.next_pairs()
        self._last_pairs = pairs
        src, tgt = (images_to_float(dict(b), self.camera_keys) for b in pairs)
        check_image_range(src, self.camera_keys, "source pairs")
        check_image_range(tgt, self.camera_keys, "target pairs")
        src, tgt = self.preprocessor(src), self.preprocessor(tgt)
        if self.alignment is not None:
            src = self.alignment(src, bc_batch, device)
            tgt = self.alignment(tgt, bc_batch, device)
        return scoped_ot(self.loss_fn, src, tgt, encoder=policy if self.encoder is not None else None,
                         scope=self._scope(), ema_encoder=self.ema)

    def _scope(self) -> str:
        return "rank" if self.accelerator.num_processes == 1 else self.scope

    def capturing(self) -> Any:
        """Context manager around the policy's forward: records encoder outputs in the single-pass layout."""
        import contextlib

        return self.capture if (self.single_pass and self.capture is not None) else contextlib.nullcontext()

    def after_backward(self) -> None:
        if self.capture is not None:
            self.capture.clear()

    def after_step(self, policy: Any) -> None:
        """After every optimizer step: move the EMA target encoder towards the policy."""
        if self.ema is not None:
            self.ema.update(policy)

    EMA_FILE = "otplug_ema.pt"
    TERMS_FILE = "otplug_terms.json"

    def save(self, checkpoint_dir: Any) -> None:
        """Extra training state of the OT side next to lerobot's training state: the EMA encoder, and the terms'
        own state (e.g. ``scale_anchor``'s reference scale)."""
        state_dir = Path(checkpoint_dir) / "training_state"
        if self.ema is not None:
            # serialised in memory and written with one Python write: torch.save straight to a full disk fails with
            # "unexpected pos" (no errno); this way it is an OSError(ENOSPC) naming the file
            buffer = io.BytesIO()
            torch.save(self.ema.state_dict(), buffer)
            with writing(state_dir / self.EMA_FILE, "the EMA encoder"):
                (state_dir / self.EMA_FILE).write_bytes(buffer.getbuffer())
        terms = self.loss_fn.state_dict() if self.loss_fn is not None else {}
        if terms:
            with writing(state_dir / self.TERMS_FILE, "the OT terms' state"):
                (state_dir / self.TERMS_FILE).write_text(json.dumps(terms, allow_nan=False))

    def load(self, checkpoint_dir: Any) -> None:
        state_dir = Path(checkpoint_dir) / "training_state"
        if self.ema is not None:
            path = state_dir / self.EMA_FILE
            if not path.is_file():
                raise OtplugError(f"--resume: {path} is missing (the run was saved without its EMA encoder)")
            self.ema.load_state_dict(torch.load(path, map_location="cpu"))
        path = state_dir / self.TERMS_FILE
        if self.loss_fn is not None and path.is_file():
            from otplug.config.files import read_json_file

            self.loss_fn.load_state_dict(read_json_file(path, what="OT terms state"))
