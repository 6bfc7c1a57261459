"""Single-pass layout: the OT embeddings read out of the BC forward pass (no second encoder pass).

In the single-pass layout the OT pairs are rows of the BC batch, ``[src | tgt | bc]``. :class:`FeatureCapture`
puts forward hooks on the encoder modules an adapter names (:meth:`~otplug.lerobot.adapters.PolicyEncoderBase.
capture_spec`) and records their outputs during ``policy.forward``; :class:`CapturedEncoder` then serves the
features of the OT rows **by side and row range** (``src`` = rows ``[0, n)``, ``tgt`` = rows ``[n, 2n)``) to the
loss, through the side-aware encoder call :func:`otplug.policy_encoder.encode`. Nothing is matched by tensor
identity or value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from otplug.errors import OtplugError

__all__ = ["CapturedEncoder", "FeatureCapture"]


class FeatureCapture:
    """Forward hooks recording the encoder outputs of one BC forward pass.

    ``FeatureCapture(encoder, keys)`` splits ``keys`` into ``supported`` (a hook exists) and ``unsupported``
    (key -> reason); use it as a context manager around the policy's forward, then ``features(key)`` gives
    (B_total, ...) features of every row of that batch, with gradients. ``clear()`` drops them after backward.
    """

    def __init__(self, encoder: Any, keys: Iterable[str]) -> None:
        self.encoder = encoder
        self.specs: dict[str, tuple[nn.Module, Callable[[list[Tensor]], Tensor]]] = {}
        self.unsupported: dict[str, str] = {}
        for key in sorted(set(keys)):
            if encoder is None or not hasattr(encoder, "capture_spec"):
                self.unsupported[key] = "the policy's encoder offers no capture hooks"
                continue
            try:
                self.specs[key] = encoder.capture_spec(key)
            except OtplugError as exc:
                self.unsupported[key] = str(exc)
        self._outputs: dict[int, list[Tensor]] = {}
        self._handles: list[Any] = []

    @property
    def supported(self) -> set[str]:
        return set(self.specs)

    def __enter__(self) -> FeatureCapture:
        self._outputs = {}
        modules = {id(m): m for m, _ in self.specs.values()}
        for mid, module in modules.items():
            def hook(_mod, _inp, out, mid=mid):
                self._outputs.setdefault(mid, []).append(out)
            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def features(self, key: str) -> Tensor:
        module, extract = self.specs[key]
        outs = self._outputs.get(id(module))
        if not outs:
            raise OtplugError(f"single-pass capture: the forward pass did not call the encoder of {key!r}")
        return extract(outs)

    def clear(self) -> None:
        self._outputs = {}


class CapturedEncoder:
    """Serves captured features by side: ``rows`` maps ``"src"`` / ``"tgt"`` to the rows of the BC batch that
    side's OT values came from. Feature names that were not captured go to ``fallback`` (a real encoder, which
    then runs a second forward on those rows) -- only if the caller allowed it."""

    def __init__(self, capture: FeatureCapture, rows: Mapping[str, slice], fallback: Any = None,
                 predictor: Any = None, tail: Any = None) -> None:
        self.capture = capture
        self.rows = dict(rows)
        self.fallback = fallback
        #: the encoder of rows after the captured ones (a target pool's rows and their source rows, which are not in
        #: the BC forward): one more encoder pass on those rows only; None: a side has exactly its captured rows
        self.tail = tail
        #: the policy's adapter that predicts action chunks for terms that need them (``joint``), or None
        self.predictor = predictor
        self._cache: dict[str, Tensor] = {}

    def predict_side_for_ot(self, side: str, batch: Mapping[str, Tensor]) -> Tensor:
        """The policy's predicted action chunk on ``batch`` (the OT rows of one side): one more forward of the
        policy on those rows (the BC forward's prediction of a row conditions ACT's VAE on the row's own actions)."""
        if self.predictor is None:
            raise OtplugError("single-pass layout: no action predictor was given for a term that needs one")
        return self.predictor.predict_action_for_ot(batch)

    def encode_side_for_ot(self, side: str, key: str, x: Tensor, *, name: str) -> Tensor:
        if name not in self.capture.supported:
            if self.fallback is None:
                why = self.capture.unsupported.get(name) or (
                    "not a key the policy's encoder modules produce (captured: "
                    f"{', '.join(sorted(self.capture.supported)) or 'none'}); a term's embed_name must name such a "
                    "batch key in the single-pass layout")
                raise OtplugError(f"single-pass capture has no features for {name!r}: {why}")
            return self.fallback.encode_feature_for_ot(name, x)
        if side not in self.rows:
            raise OtplugError(f"single-pass capture: no rows for side {side!r} (have {sorted(self.rows)})")
        if name not in self._cache:
            self._cache[name] = self.capture.features(name)
        feats = self._cache[name][self.rows[side]]
        if self.tail is not None and x.shape[0] > feats.shape[0]:
            rest = self.tail.encode_feature_for_ot(name, x[feats.shape[0]:])
            feats = torch.cat([feats, rest.to(feats.dtype)], dim=0)
        if feats.shape[0] != x.shape[0]:
            raise OtplugError(f"single-pass capture: {side} {key!r} has {x.shape[0]} rows but rows {self.rows[side]} "
                              f"of the captured features give {feats.shape[0]}")
        return feats
