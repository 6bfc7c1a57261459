"""The OT side of a training step: pair loader, loss, capture and alignment (:class:`OTSide`).

Per step the loop calls :meth:`OTSide.build_batch` (the batch of the policy's forward), :meth:`OTSide.capturing`
(around that forward) and :meth:`OTSide.loss` (``ot_loss`` after it). Where the pairs go is the layout, a strategy
chosen once from ``--ot.layout`` (:data:`LAYOUTS`):

* :class:`SinglePass`: ``ot.batch_size`` pairs in front of the BC rows, ``[src | tgt | bc]``; the loss takes the
  src/tgt rows of the preprocessed batch, embeddings served from the BC forward by
  :class:`~otplug.lerobot.capture.CapturedEncoder` (rows ``[0, n)`` and ``[n, 2n)``), with an extra encoder pass
  for keys without a capture hook;
* :class:`Separate`: a batch of pairs of its own, through the same uint8->float step and preprocessor instance,
  aligned to the BC batch by the alignment policy, encoded in extra forward passes.

The scope (``rank`` / ``global``) is decided once (:attr:`OTSide.scope`) and applied in one place,
:func:`scoped_ot`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

import otplug
from otplug.atomic import save_file, save_text
from otplug.distributed import scoped_ot
from otplug.ema import EMAEncoder
from otplug.errors import OtplugError
from otplug.lerobot.capture import CapturedEncoder, FeatureCapture
from otplug.lerobot.datasets import base_key
from otplug.lerobot.pair_dataset import cycle_epochs, fast_forward, make_pair_loader
from otplug.lerobot.pool import make_pool_loader, missing_pool_keys, pool_rows, target_keys_by_term
from otplug.lerobot.train.batches import check_image_range, concat_batches, images_to_float, rows
from otplug.lerobot.train.run_data import RunData
from otplug.plugins import get_registry
from otplug.policy_encoder import resolve_encoder, unwrap_policy

__all__ = ["LAYOUTS", "OTSide", "Separate", "SinglePass"]


def pair_workers(ot: Any, bc_workers: int) -> int:
    """Worker processes of the OT pair loader: ``--ot.num_workers`` when set; none on machines with <= 4 cores
    (each worker holds a copy of both datasets, ~1 GB with video); else half the BC loader's."""
    if ot.num_workers is not None:
        return ot.num_workers
    return 0 if (os.cpu_count() or 1) <= 4 else bc_workers // 2


class OTSide:
    """Everything the OT loss needs in the loop: pair loader, loss, EMA encoder, and the layout
    (:class:`SinglePass` or :class:`Separate`, chosen once from ``--ot.layout``) that places the pairs in the step.
    The loop calls :meth:`build_batch`, :meth:`capturing`, :meth:`loss`, :meth:`after_backward` and
    :meth:`after_step`, whatever the layout."""

    def __init__(self, cfg: Any, data: RunData, policy: Any, preprocessor: Any, accelerator: Any,
                 start_step: int) -> None:
        ot = cfg.ot
        self.ot = ot
        self.accelerator = accelerator
        self.camera_keys = data.camera_keys
        self.preprocessor = preprocessor
        #: the scope the loss is computed with: ``--ot.scope``, or ``rank`` with one process (the same plan)
        self.scope = "rank" if accelerator.num_processes == 1 else ot.scope
        rank = accelerator.process_index
        #: target-pool rows per step (``--ot.target_pool``; 0 without a pool) and DTW-paired rows per step
        self.pool_rows = pool_rows(ot.batch_size, ot.pool_share) if data.pool_pairs is not None else 0
        self.pair_rows = ot.batch_size - self.pool_rows
        self.pair_dataset = data.pairs
        gen = torch.Generator()
        gen.manual_seed((cfg.seed or 0) * 1_000_003 + 104_729 * rank)
        workers = pair_workers(ot, cfg.num_workers)
        self.loader = make_pair_loader(self.pair_dataset, self.pair_rows, workers, gen, self.camera_keys)
        if len(self.loader) == 0:
            raise OtplugError(f"--ot.batch_size={ot.batch_size} is larger than the OT pair dataset "
                              f"({len(self.pair_dataset)} target frames)")
        # a resumed run continues the uninterrupted run's pair order (no batch is loaded to get there)
        self._pairs = cycle_epochs(self.pair_dataset, self.loader, fast_forward(self.loader, start_step))
        self._pool = None
        self._pool_from = 0
        if data.pool_pairs is not None:
            self._pool = iter(make_pool_loader(data.pool_pairs, self.pool_rows, (cfg.seed or 0) + 104_729 * rank,
                                               start_step, workers, self.camera_keys))
        pcfg = unwrap_policy(policy).config
        self.policy_inputs = sorted(set(pcfg.input_features) | set(pcfg.output_features))
        self.loss_fn = otplug.OTLoss(ot.loss_config) if ot.has_loss else None
        self.src_keys: list[str] = []
        self.tgt_keys: list[str] = []
        self.predicting: list[str] = []
        self.embed_keys: list[str] = []
        self.encoder = None
        self.ema: EMAEncoder | None = None
        if self.loss_fn is not None:
            self.src_keys = sorted(self.loss_fn.required_keys("src") | self.loss_fn.optional_keys("src"))
            self.tgt_keys = sorted(self.loss_fn.required_keys("tgt") | self.loss_fn.optional_keys("tgt"))
            self._check_features(data.dataset.meta.features)
            self.embed_keys = sorted(self.loss_fn.embedding_keys)
            self.predicting = self.loss_fn.predicts_actions
            if self.predicting:
                # terms that compare the policy's predicted actions on the target rows get the policy's inputs there
                self.tgt_keys = sorted(set(self.tgt_keys) | set(pcfg.input_features))
            self.encoder = resolve_encoder(policy) if self.embed_keys or self.predicting else None
            self._check_prediction()
            if data.pool:
                self._check_pool(data.pool)
        self.layout: SinglePass | Separate = LAYOUTS[ot.layout](self, policy, accelerator.is_main_process)
        if self.loss_fn is not None and self.loss_fn.needs_ema_encoder:
            # a slowly updated copy of the policy gives the stop-gradient side's features (ROT's target encoder)
            self.ema = EMAEncoder(policy, decay=self.loss_fn.config.ema_decay)

    def _check_prediction(self) -> None:
        """A term that compares predicted actions, with a policy that cannot predict them differentiably (Diffusion's
        sampling loop) or in a scope that cannot serve them: refused before the first step, naming the term."""
        if not self.predicting:
            return
        from otplug.policy_encoder import prediction_problem

        names = ", ".join(repr(n) for n in self.predicting)
        why = prediction_problem(self.encoder)
        if why is not None:
            raise OtplugError(f"OT term {names} compares the policy's predicted action chunk on the target rows, but "
                              f"{why}")
        if self.scope != "rank":
            raise OtplugError(f"OT term {names} compares the policy's predicted actions: --ot.scope=global cannot "
                              "gather them across processes yet; use --ot.scope=rank")

    def _check_pool(self, pool: list[Any]) -> None:
        """Every term key the target side reads must be in every pool dataset (named before the first step)."""
        needed = target_keys_by_term(self.loss_fn)
        if self.predicting:
            needed["(policy inputs of " + ", ".join(self.predicting) + ")"] = sorted(
                base_key(k) for k in self.tgt_keys if k.startswith("observation."))
        why = missing_pool_keys(needed, [ds.meta.features for ds in pool], self.ot.pool)
        if why is not None:
            raise OtplugError(why)

    def _check_features(self, features: Any) -> None:
        for key in sorted(set(self.src_keys) | set(self.tgt_keys)):
            base = base_key(key)
            if base not in features:
                raise OtplugError(f"the OT config uses {key!r} but the dataset has no feature {base!r} "
                                  f"(features: {', '.join(sorted(features))})")

    def next_pairs(self) -> tuple[dict, dict]:
        """The next pair batches, through the uint8->float step (once per batch, as the loop does for the BC
        batch): one decoding path whatever the storage."""
        src, tgt = next(self._pairs)
        return images_to_float(dict(src), self.camera_keys), images_to_float(dict(tgt), self.camera_keys)

    def next_pool(self) -> tuple[dict, dict, int] | None:
        """The next pool rows ``(src, tgt, paired)``, preprocessed (they never enter the policy's BC forward; the
        loss encodes them), or None without a pool. ``paired``: how many lead rows are DTW pairs."""
        if self._pool is None:
            return None
        src, tgt, paired = next(self._pool)
        src, tgt = images_to_float(dict(src), self.camera_keys), images_to_float(dict(tgt), self.camera_keys)
        check_image_range(src, self.camera_keys, "source rows of the pool")
        check_image_range(tgt, self.camera_keys, "target pool rows")
        return self.preprocessor(src), self.preprocessor(tgt), int(paired)

    def with_pool(self, src: dict, tgt: dict, n: int) -> tuple[dict, dict, int | None]:
        """``src`` / ``tgt`` (``n`` pairs each, as the loss reads them) followed by this step's pool rows, and the
        number of paired rows in front (None without a pool). Only the keys both parts carry are kept, so a pool
        without ``action`` drops ``action`` from the target side (:meth:`_check_pool` made sure no term reads it)."""
        extra = self.next_pool()
        if extra is None:
            return src, tgt, None
        psrc, ptgt, paired = extra
        self._pool_from = n  # the pool's rows start after the n pairs (metrics of this step)
        return _joined(src, psrc), _joined(tgt, ptgt), n + paired

    def build_batch(self, bc_batch: dict) -> tuple[dict, int]:
        """The batch the policy's forward runs on and the number of pairs ``n`` in it (see the layouts);
        ``bc_batch`` has been through the uint8->float step."""
        return self.layout.build_batch(bc_batch)

    def capturing(self) -> Any:
        """Context manager around the policy's forward (the single-pass layout records encoder outputs)."""
        return self.layout.capturing()

    def loss(self, batch: dict, n: int, policy: Any, device: torch.device, *, replay: bool = False) -> Any:
        """The OT result of this step (``None`` without an OT loss). ``batch`` is the preprocessed batch the policy
        was just run on; ``n`` as returned by :meth:`build_batch`. ``replay``: the same pairs as the last call (the
        separate layout draws new ones otherwise), to recompute a step."""
        if self.loss_fn is None:
            return None
        res = self.layout.loss(batch, n, policy, device, replay=replay)
        res.metrics["ot_capture_fallback"] = float(len(self.layout.fallback_keys))
        if self._pool is not None:
            plan, start = res.plan.detach(), self._pool_from
            total = float(plan.sum())
            res.metrics["ot_pool_rows"] = float(plan.shape[1] - start)
            res.metrics["ot_pool_mass"] = float(plan[start:].sum()) / total if total > 0 else 0.0
        return res

    def solve(self, src: dict, tgt: dict, encoder: Any, paired: int | None = None) -> Any:
        """The OT loss of ``src`` / ``tgt`` in this run's scope, with the EMA encoder when the terms use one;
        ``paired``: the number of paired rows in front of the pool's (None without a pool)."""
        return scoped_ot(self.loss_fn, src, tgt, encoder=encoder, scope=self.scope, ema_encoder=self.ema,
                         paired=paired)

    def after_backward(self) -> None:
        self.layout.after_backward()

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
            save_file(state_dir / self.EMA_FILE, lambda tmp: tmp.write_bytes(buffer.getbuffer()), "the EMA encoder")
        terms = self.loss_fn.state_dict() if self.loss_fn is not None else {}
        if terms:
            save_text(state_dir / self.TERMS_FILE, json.dumps(terms, allow_nan=False), "the OT terms' state")

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


def _joined(pairs: dict, pool: dict) -> dict:
    """The rows of ``pairs`` then ``pool`` on the keys both carry as tensors (or both as lists): a key only one
    part has, or has as ``None`` (a preprocessor's placeholder for a missing feature), is left out."""
    def kind(v: Any) -> str | None:
        return "tensor" if isinstance(v, torch.Tensor) else "list" if isinstance(v, list | tuple) else None

    keys = [k for k in pairs if k in pool and kind(pairs[k]) is not None and kind(pairs[k]) == kind(pool[k])]
    return concat_batches([{k: pairs[k] for k in keys}, {k: pool[k] for k in keys}], what="[pairs, pool]")


class SinglePass:
    """``--ot.layout=single-pass``: the pairs are rows of the BC batch, ``[src | tgt | bc]``, and the OT embeddings
    are read out of the BC forward by the capture hooks (:class:`~otplug.lerobot.capture.FeatureCapture`); a key
    without a hook gets an extra encoder pass on its OT rows (``--ot.capture_fallback=encode``) or is refused."""

    name = "single-pass"

    def __init__(self, side: OTSide, policy: Any, is_main: bool) -> None:
        self.side = side
        self.capture: FeatureCapture | None = None
        self.fallback_keys: list[str] = []
        if side.embed_keys:
            own = hasattr(unwrap_policy(policy), "encode_feature_for_ot")
            self.capture = FeatureCapture(None if own else side.encoder, side.embed_keys)
            self._plan_fallback(self.capture.unsupported, side.ot.capture_fallback, is_main)

    def _plan_fallback(self, unsupported: dict[str, str], fallback: str, is_main: bool) -> None:
        if not unsupported:
            return
        if fallback == "error":
            raise OtplugError("single-pass layout cannot capture " + "; ".join(
                f"{k}: {why}" for k, why in unsupported.items()) + " (use --ot.capture_fallback=encode or "
                "--ot.layout=separate)")
        self.fallback_keys = sorted(unsupported)
        if is_main:
            warnings.warn(f"single-pass layout: no capture hook for {self.fallback_keys}; those embeddings are "
                          "computed by an extra encoder pass on the OT rows (metric ot_capture_fallback)", stacklevel=2)

    def build_batch(self, bc_batch: dict) -> tuple[dict, int]:
        """``[src | tgt | bc]`` rows (every part already through the uint8->float step); returns the batch and
        the number of pairs ``n``."""
        src, tgt = self.side.next_pairs()
        n = len(next(v for v in src.values() if isinstance(v, torch.Tensor)))
        return concat_batches([src, tgt, bc_batch], required=self.side.policy_inputs), n

    def capturing(self) -> Any:
        return self.capture if self.capture is not None else contextlib.nullcontext()

    def loss(self, batch: dict, n: int, policy: Any, device: torch.device, *, replay: bool = False) -> Any:
        """Rows ``[0, n)`` and ``[n, 2n)`` of the preprocessed batch, embeddings served from the BC forward (the
        batch holds its pairs, so ``replay`` changes nothing)."""
        side = self.side
        sides = {"src": slice(0, n), "tgt": slice(n, 2 * n)}
        src, tgt = rows(batch, side.src_keys, sides["src"]), rows(batch, side.tgt_keys, sides["tgt"])
        # pool rows (and their source rows) follow the pairs; their features come from an encoder pass of their own
        src, tgt, paired = side.with_pool(src, tgt, n)
        encoder = side.encoder if side.predicting else None
        if self.capture is not None:
            encoder = CapturedEncoder(self.capture, sides, fallback=side.encoder if self.fallback_keys else None,
                                      predictor=side.encoder if side.predicting else None,
                                      tail=side.encoder if paired is not None else None)
        return side.solve(src, tgt, encoder, paired)

    def after_backward(self) -> None:
        if self.capture is not None:
            self.capture.clear()


class Separate:
    """``--ot.layout=separate``: the pairs are a batch of their own, through the same uint8->float step and
    preprocessor instance as the BC batch, aligned to it by the alignment policy (``--ot.alignment``) and encoded
    by the policy in extra forward passes."""

    name = "separate"

    def __init__(self, side: OTSide, policy: Any, is_main: bool) -> None:
        self.side = side
        self.fallback_keys: list[str] = []  # every embedding comes from an encoder pass of its own
        # the last step's preprocessed pairs with their pool rows and paired count (a step's recomputation)
        self._last: tuple[dict, dict, int | None] | None = None
        factory = get_registry().get("alignment", side.ot.alignment, field="--ot.alignment").load()
        self.alignment = factory()

    def build_batch(self, bc_batch: dict) -> tuple[dict, int]:
        """The BC batch alone; no pair rows."""
        return bc_batch, 0

    def capturing(self) -> Any:
        return contextlib.nullcontext()

    def loss(self, bc_batch: dict, n: int, policy: Any, device: torch.device, *, replay: bool = False) -> Any:
        side = self.side
        if not (replay and self._last is not None):
            src, tgt = side.next_pairs()
            check_image_range(src, side.camera_keys, "source pairs")
            check_image_range(tgt, side.camera_keys, "target pairs")
            src, tgt = side.preprocessor(src), side.preprocessor(tgt)
            n_pairs = len(next(v for v in src.values() if isinstance(v, torch.Tensor)))
            self._last = side.with_pool(src, tgt, n_pairs)
        src, tgt, paired = self._last
        if self.alignment is not None:
            src = self.alignment(src, bc_batch, device)
            tgt = self.alignment(tgt, bc_batch, device)
        return side.solve(src, tgt, side.encoder if side.predicting else policy if side.encoder is not None else None,
                          paired)

    def after_backward(self) -> None:
        pass


#: ``--ot.layout`` -> its strategy: the one place the layout is decided (the option's choices are these names)
LAYOUTS: dict[str, type[SinglePass] | type[Separate]] = {cls.name: cls for cls in (SinglePass, Separate)}
