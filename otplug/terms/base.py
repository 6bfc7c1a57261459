"""What a cost term is, and the context it gets.

A term is built once per :class:`otplug.OTLoss` as ``factory(options)`` (``options``: an instance of the
term's registered config class) and called every step::

    term.cost(src, tgt, ctx) -> Tensor (n_src, n_tgt)   # or a TermCost with named parts

The core multiplies by the term's ``weight`` (the seed's ``term_weight``) and sums the terms into M.
:class:`TermContext` gives terms the shared machinery: strict key reading, slicing, time reduction,
encoder features (with gradients) and squared distances.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from otplug.errors import BatchError, OtplugError
from otplug.features.extract import has_time_axis, pad_mask, read_value, slice_last
from otplug.features.reduce import Reducer, reduce_time
from otplug.policy_encoder import encode

__all__ = ["Term", "TermContext", "TermCost", "sq_dist"]

_EXACT_LIMIT = 1 << 24  # n*m*F below which distances are computed by differences (exact, no cancellation)


def sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``cdist(x, y)**2`` of (n, F) and (m, F), differentiable everywhere
    (``torch.cdist`` has an undefined gradient at distance 0)."""
    if x.shape[0] * y.shape[0] * x.shape[1] <= _EXACT_LIMIT:
        return (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)
    xx = x.pow(2).sum(-1, keepdim=True)
    yy = y.pow(2).sum(-1, keepdim=True).transpose(0, 1)
    return (xx + yy - 2.0 * (x @ y.transpose(0, 1))).clamp_min(0.0)


@attrs.frozen
class TermCost:
    """A term's cost with optional named parts (e.g. ``embed`` and ``label``), scalar ``stats`` that the
    core reports as ``ot_<stat>/<term name>`` metrics, and ``penalties``: named 0-d tensors (with gradients)
    that the core adds to the loss as they are -- not to M, not multiplied by the term's ``weight`` (e.g. the
    variance/covariance regulariser of the embedding terms)."""

    matrix: torch.Tensor
    parts: Mapping[str, torch.Tensor] = attrs.field(factory=dict)
    stats: Mapping[str, float] = attrs.field(factory=dict)
    penalties: Mapping[str, torch.Tensor] = attrs.field(factory=dict)


@runtime_checkable
class Term(Protocol):
    """``cost(src, tgt, ctx)`` -> (n_src, n_tgt). Optional: ``within_cost(batch, side, ctx)`` -> (n, n), the same
    cost between the samples of one side (``debias = true`` needs it; ``side`` is ``"src"`` or ``"tgt"``)."""

    def cost(self, src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor], ctx: TermContext) -> Any: ...


class TermContext:
    """Per-call helpers for a term. One context per term per call; encoder outputs are cached per call
    across terms (two terms on the same camera encode it once).

    ``encoder`` computes the policy's own features (with gradients); ``ema_encoder``, when the caller gave one,
    an EMA copy of the policy (features without gradients, for the side a term keeps constant)."""

    def __init__(self, *, reducer: Reducer, reducer_name: str, encoder: Any, cache: dict,
                 ema_encoder: Any = None) -> None:
        self.reducer = reducer
        self.reducer_name = reducer_name
        self.encoder = encoder
        self.ema_encoder = ema_encoder
        self._cache = cache

    # -- raw values ------------------------------------------------------------------------------------
    def value(self, batch: Mapping[str, torch.Tensor], key: str, side: str) -> torch.Tensor:
        return read_value(batch, key, side)

    def label(self, batch: Mapping[str, torch.Tensor], key: str, side: str, *,
              dim_slice: tuple[int, int] | None = None, pad_key: str | None = None) -> torch.Tensor:
        """Raw values -> slice on the last axis -> time reduce -> (B, F), detached (no gradient)."""
        x = slice_last(read_value(batch, key, side), dim_slice, key, side).detach()
        time_axis = has_time_axis(key, x)
        mask = pad_mask(batch, key, x, side, pad_key) if time_axis and self.reducer_name != "flatten" else None
        return reduce_time(x, self.reducer, time_axis=time_axis, mask=mask)

    # -- encoder features --------------------------------------------------------------------------------
    def embed(self, batch: Mapping[str, torch.Tensor], key: str, side: str, *, embed_name: str | None = None,
              encoder: str = "policy") -> torch.Tensor:
        """The policy's own features of ``batch[key]`` (with gradients) -> time reduce -> (B, F).

        ``encoder = "ema"``: the features of the EMA copy of the policy instead (computed without gradients).
        """
        if encoder not in ("policy", "ema"):
            raise ValueError(f"encoder must be 'policy' or 'ema', got {encoder!r}")
        enc = self.encoder if encoder == "policy" else self.ema_encoder
        if enc is None and encoder == "ema":
            raise OtplugError(
                f"term needs EMA-encoder features for {key!r} (stopgrad_encoder = 'ema') but no EMA encoder was "
                "given: keep an otplug.ema.EMAEncoder of the policy, update it after each optimizer step and call "
                "OTLoss(...)(src, tgt, encoder=policy, ema_encoder=ema)"
            )
        if enc is None:
            raise OtplugError(
                f"term needs encoder features for {key!r} but no encoder was given: call OTLoss(...)(src, tgt, "
                "encoder=policy) with a policy that has encode_feature_for_ot or a registered encoder adapter"
            )
        x = read_value(batch, key, side)
        name = embed_name or key
        cache_key = (side, key, name, self.reducer_name) + (("ema",) if encoder == "ema" else ())
        if cache_key in self._cache:
            return self._cache[cache_key]
        try:
            if encoder == "ema":
                with torch.no_grad():
                    feats = encode(enc, side, key, x, name)
            else:
                feats = encode(enc, side, key, x, name)
        except Exception as exc:
            # the policy's own code: its exception reaches the caller unchanged, not blamed on the term
            exc._otplug_passthrough = True  # type: ignore[attr-defined]
            raise
        if not isinstance(feats, torch.Tensor) or feats.ndim < 1 or feats.shape[0] != x.shape[0]:
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise OtplugError(
                f"encode_feature_for_ot({name!r}, x) must return a tensor with batch size {x.shape[0]} "
                f"(x has shape {tuple(x.shape)}), got {got}"
            )
        time_axis = has_time_axis(key, x)
        if time_axis and (feats.ndim < 2 or feats.shape[1] != x.shape[1]):
            raise OtplugError(
                f"encode_feature_for_ot({name!r}, x) got x with a time axis {tuple(x.shape)} and must keep it "
                f"as axis 1 of its output, got {tuple(feats.shape)}"
            )
        mask = pad_mask(batch, key, x, side) if time_axis and self.reducer_name != "flatten" else None
        out = reduce_time(feats, self.reducer, time_axis=time_axis, mask=mask)
        self._cache[cache_key] = out
        return out

    # -- the policy's actions ------------------------------------------------------------------------------
    def predict_actions(self, batch: Mapping[str, torch.Tensor], side: str) -> torch.Tensor:
        """The policy's predicted action chunk (B, T, D) on the observations of ``batch`` (with gradients), once per
        side and call (cached across terms): the encoder contract's ``predict_action_for_ot`` (docs/plugins.md)."""
        from otplug.policy_encoder import predict, prediction_problem

        if self.encoder is None:
            raise OtplugError("term needs the policy's predicted actions but no encoder was given: call "
                              "OTLoss(...)(src, tgt, encoder=policy) with a policy that has predict_action_for_ot")
        cache_key = ("predict", side)
        if cache_key in self._cache:
            return self._cache[cache_key]
        why = prediction_problem(self.encoder)
        if why is not None:
            raise OtplugError(f"term needs the policy's predicted action chunk: {why}")
        try:
            out = predict(self.encoder, side, batch)
        except Exception as exc:
            exc._otplug_passthrough = True  # type: ignore[attr-defined]  # the policy's own code
            raise
        n = next((int(v.shape[0]) for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim >= 1), None)
        if not isinstance(out, torch.Tensor) or out.ndim not in (2, 3) or (n is not None and out.shape[0] != n):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise OtplugError(f"predict_action_for_ot(batch) must return a (B, T, D) or (B, D) tensor with B = {n}, "
                              f"got {got}")
        self._cache[cache_key] = out
        return out

    # -- distances -------------------------------------------------------------------------------------
    @staticmethod
    def sq_dist(x: torch.Tensor, y: torch.Tensor, *, what: str = "features") -> torch.Tensor:
        if x.shape[1:] != y.shape[1:]:
            raise BatchError(f"{what}: src has shape {tuple(x.shape)} but tgt has {tuple(y.shape)} "
                             "(feature sizes after slicing/flattening must match)")
        if x.dtype != y.dtype:
            dtype = torch.promote_types(x.dtype, y.dtype)
            x, y = x.to(dtype), y.to(dtype)
        if x.device != y.device:
            raise BatchError(f"{what}: src is on {x.device} but tgt on {y.device}")
        return sq_dist(x, y)
