"""Composing the cost matrix: ``M = sum_k term_weight_k * M_term_k`` (step 3 of
features -> terms -> M -> solver -> loss -> sinks).

The term contract is enforced here, for built-in and third-party terms alike: ``cost()`` returns a floating
``(n_src, n_tgt)`` tensor (or a :class:`~otplug.terms.base.TermCost` holding one) -- never broadcast --
whose entries are finite and ``>= 0``. Negative entries beyond rounding (``64 eps * max(1, max M_term)``)
are an error naming the term and its plugin; rounding-sized negatives are clamped to 0. A term weight that
underflows (or overflows) the cost's dtype is an error naming the weight. Every exception raised inside a
term or a time reducer names that component and its plugin (:mod:`otplug.plugins.calls`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import torch

from otplug.errors import BatchError, OtplugError
from otplug.plugins.calls import Origin, attribute, calling, contract_error
from otplug.terms.base import TermContext, TermCost

__all__ = ["NEGATIVE_TOLERANCE", "BoundTerm", "CostBreakdown", "compose_cost", "term_keys"]

#: negative cost entries down to ``-NEGATIVE_TOLERANCE * eps(dtype) * max(1, max M_term)`` are rounding
#: (e.g. ``1 - cos`` of identical vectors) and are clamped to 0; anything below is a broken term
NEGATIVE_TOLERANCE = 64.0


@attrs.frozen
class BoundTerm:
    """A built term with its name, outer weight and time reducer, and where both come from."""

    name: str
    type: str
    weight: float
    impl: Any
    reducer: Any
    reducer_name: str
    origin: Origin | None = None
    reducer_origin: Origin | None = None

    @property
    def who(self) -> Origin:
        return self.origin if self.origin is not None else Origin("term", self.name, self.type)


@attrs.frozen
class CostBreakdown:
    matrix: torch.Tensor
    terms: dict[str, torch.Tensor]  # M_term (before term_weight) per term name
    stats: dict[str, float] = attrs.field(factory=dict)  # metric name -> value, from the terms' stats
    #: with ``within=True``: the within-domain costs ``{"src": M_ss (n, n), "tgt": M_tt (m, m)}``, composed with
    #: the same weights and per-term normalisation as ``matrix``
    within: dict[str, torch.Tensor] = attrs.field(factory=dict)
    #: the terms' penalties (0-d, with gradients), ``"<penalty>/<term>" -> tensor``, to be added to the loss
    penalties: dict[str, torch.Tensor] = attrs.field(factory=dict)


def _str_keys(origin: Origin, call: str, value: Any) -> set[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise contract_error(origin, call, f"must return a set of batch keys (strings), got {type(value).__name__}")
    keys = set(value)
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        raise contract_error(origin, call, f"must return batch keys as strings, got {type(bad[0]).__name__}")
    return keys


def term_method_keys(term: BoundTerm, method: str, *args: Any) -> set[str] | None:
    """``term.impl.<method>(*args)`` as a set of keys, attributed; ``None`` when the term lacks the method."""
    fn = getattr(term.impl, method, None)
    if fn is None:
        return None
    call = f"{method}({', '.join(repr(a) for a in args)})"
    with calling(term.who, call):
        value = fn(*args)
    return _str_keys(term.who, call, value)


def term_keys(term: BoundTerm, side: str) -> set[str]:
    """Batch keys ``term`` reads on ``side``: its ``required_keys(side)``, else its config's key fields."""
    keys = term_method_keys(term, "required_keys", side)
    if keys is not None:
        return keys
    opts = getattr(term.impl, "config", None)
    key = getattr(opts, "src_key", None)
    if side == "tgt":
        key = getattr(opts, "target_key", None) or getattr(opts, "tgt_key", None) or key
    return {key} if isinstance(key, str) and key else set()


def _batch_size(batch: Mapping[str, Any], keys: set[str]) -> int | None:
    """The batch size the term must produce: from its keys, else from the batch when every tensor agrees."""
    for key in sorted(keys):
        x = batch.get(key)
        if isinstance(x, torch.Tensor) and x.ndim >= 1:
            return int(x.shape[0])
    sizes = {int(x.shape[0]) for x in batch.values() if isinstance(x, torch.Tensor) and x.ndim >= 1}
    return sizes.pop() if len(sizes) == 1 else None


def _checked_reducer(term: BoundTerm) -> Any:
    reducer, origin = term.reducer, term.reducer_origin
    if origin is None:
        return reducer

    def reduce(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        with calling(origin, "the reducer"):
            out = reducer(x, mask)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise contract_error(origin, "the reducer", f"must return a (B, F) tensor with B = {x.shape[0]} for "
                                 f"an input of shape {tuple(x.shape)}, got {got}")
        return out

    return reduce


def _check_matrix(term: BoundTerm, out: Any, n_src: int | None, n_tgt: int | None, call: str = "cost()",
                  within: str | None = None) -> torch.Tensor:
    who = term.who
    m = out.matrix if isinstance(out, TermCost) else out
    rows, cols = ("n_src", "n_tgt") if within is None else ("n", "n")
    if not isinstance(m, torch.Tensor):
        raise contract_error(who, call, f"must return a torch.Tensor ({rows}, {cols}) or a TermCost, got "
                             f"{type(m).__name__}")
    if not torch.is_floating_point(m):
        raise contract_error(who, call, f"returned a {str(m.dtype).removeprefix('torch.')} cost; costs must be "
                             "a floating-point tensor")
    expected = (n_src, n_tgt)
    if m.ndim != 2 or any(e is not None and e != s for e, s in zip(expected, m.shape, strict=False)):
        want = f"({n_src if n_src is not None else rows}, {n_tgt if n_tgt is not None else cols})"
        layout = ("one row per source sample, one column per target sample" if within is None else
                  f"one row and one column per {within} sample")
        raise contract_error(who, call, f"must return a cost of shape {want} ({layout}; never broadcast), got "
                             f"{tuple(m.shape)}")
    return m


def _check_values(term: BoundTerm, out: Any, m: torch.Tensor, call: str = "cost()") -> torch.Tensor:
    """Finite, >= 0 (rounding-sized negatives clamped), and its weight neither underflows nor overflows."""
    who = term.who
    md = m.detach()
    finite, lo, hi = torch.stack([torch.isfinite(md).all().to(md.dtype), md.amin(), md.amax()]).tolist()
    if not finite:
        bad = int((~torch.isfinite(md)).sum())
        raise attribute(BatchError(f"term {term.name!r} produced {bad} non-finite cost(s) (shape {tuple(m.shape)}); "
                                   "check the batch values and the term's scale"), who)
    finfo = torch.finfo(m.dtype)
    tol = NEGATIVE_TOLERANCE * finfo.eps * max(1.0, hi)
    if lo < -tol:
        raise contract_error(who, call, f"returned negative costs (min {lo:.3g}, max {hi:.3g}); costs must be "
                             "finite and >= 0 (e.g. squared distances, 1 - cosine): shift or clamp them in the term")
    if lo < 0:
        m = m.clamp_min(0.0)
    top = term.weight * hi
    what = f"term {term.name!r} weight (term_weight) {term.weight:g}"
    if top > finfo.max:
        raise OtplugError(f"{what} overflows its {_dt(m)} costs: largest M_term {hi:.3g} x weight = {top:.3g} > "
                          f"{finfo.max:.3g}; lower the weight or normalise the cost")
    if hi > 0 and top < finfo.tiny:
        raise OtplugError(f"{what} underflows its {_dt(m)} costs to (almost) 0: largest M_term {hi:.3g} x weight = "
                          f"{top:.3g} < {finfo.tiny:.3g}, the smallest normal {_dt(m)}; use a weight that keeps "
                          "the term's costs representable (or drop the term)")
    if hi < finfo.tiny and isinstance(out, TermCost) and out.parts:
        # an all-zero cost whose parts are not: an inner weight (weight_label, weight_embed) underflowed
        for part, pm in out.parts.items():
            if isinstance(pm, torch.Tensor) and pm.numel() and float(pm.detach().abs().max()) >= finfo.tiny:
                raise OtplugError(f"term {term.name!r}: its {_dt(m)} cost is all (almost) 0 although its "
                                  f"{part!r} part is not (max {float(pm.detach().abs().max()):.3g}): an inner "
                                  "weight (weight_label / weight_embed) underflows; use a larger weight")
    return m


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _check_penalties(term: BoundTerm, out: Any) -> dict[str, torch.Tensor]:
    """A TermCost's penalties: named, finite, 0-d floating tensors (added to the loss as they are)."""
    if not isinstance(out, TermCost) or not out.penalties:
        return {}
    found: dict[str, torch.Tensor] = {}
    for name, p in out.penalties.items():
        if not isinstance(name, str) or not name:
            raise contract_error(term.who, "cost()", f"returned a penalty named {name!r}; penalty names are "
                                 "non-empty strings")
        if not isinstance(p, torch.Tensor) or p.ndim != 0 or not torch.is_floating_point(p):
            got = f"shape {tuple(p.shape)} {_dt(p)}" if isinstance(p, torch.Tensor) else type(p).__name__
            raise contract_error(term.who, "cost()", f"returned penalty {name!r} as {got}; a penalty is a 0-d "
                                 "floating-point tensor")
        if not bool(torch.isfinite(p.detach())):
            raise attribute(BatchError(f"term {term.name!r} produced a non-finite penalty {name!r} "
                                       f"({float(p.detach())})"), term.who)
        found[f"{name}/{term.name}"] = p
    return found


@contextlib.contextmanager
def _naming(term: BoundTerm) -> Iterator[None]:
    """A batch value a built-in term cannot use (missing key, sparse, complex, meta, non-finite...: raised by
    :func:`otplug.features.extract.read_value` with the key) names the term too; a third-party term's errors are
    named by :func:`~otplug.plugins.calls.calling` already."""
    try:
        yield
    except BatchError as exc:
        if term.who.builtin and getattr(exc, "key", None) is not None and not getattr(exc, "_otplug_term", None):
            exc._otplug_term = term.name  # type: ignore[attr-defined]
            if exc.args and isinstance(exc.args[0], str):
                exc.args = (f"term {term.name!r} (type {term.type!r}): {exc.args[0]}", *exc.args[1:])
        raise


def _within_cost(term: BoundTerm, batch: Mapping[str, torch.Tensor], side: str, ctx: TermContext) -> torch.Tensor:
    fn = getattr(term.impl, "within_cost", None)
    if fn is None:
        raise OtplugError(f"term {term.name!r} (type {term.type!r}) has no within_cost(batch, side, ctx), which "
                          "debias = true needs")
    call = f"within_cost({side!r})"
    with calling(term.who, call), _naming(term):
        out = fn(batch, side, ctx)
    n = _batch_size(batch, term_keys(term, side))
    m = _check_matrix(term, out, n, n, call, within="source" if side == "src" else "target")
    if m.shape[0] != m.shape[1]:
        raise contract_error(term.who, call, f"must return a square (n, n) cost, got {tuple(m.shape)}")
    return _check_values(term, out, m, call)


#: ``term_normalization = "mean"`` divides a term by its detached mean, but never by less than this fraction of
#: the mean it had at its first call: a term whose cost goes to 0 (features collapsing) would otherwise have its
#: gradient scaled up without bound (docs/math.md §7.6).
TERM_SCALE_FLOOR = 0.01


def compose_cost(terms: list[BoundTerm], src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor],
                 encoder: Any, *, normalize_terms: bool = False, ema_encoder: Any = None,
                 within: bool = False, term_refs: dict[str, float] | None = None) -> CostBreakdown:
    """``M = sum_k weight_k * M_k`` (``M_k`` divided by its own detached mean first with ``normalize_terms``), with
    each term's share of M as the stat ``ot_cost_share/<term>`` (``weight_k * mean(M_k) / mean(M)``).

    With ``normalize_terms`` the divisor is at least :data:`TERM_SCALE_FLOOR` times the term's first mean, kept in
    ``term_refs`` (``{term name: mean}``, filled here on a term's first call; the caller keeps it across steps); the
    stat ``ot_term_scale_floored/<term>`` is 1 on the steps where the floor applied.

    ``within=True`` also composes the within-domain costs ``M_ss``, ``M_tt`` from the terms' ``within_cost``
    (each divided by the same detached scale as its ``M_k``), for the debiased loss.
    """
    cache: dict = {}
    contributions: dict[str, torch.Tensor] = {}
    floored: dict[str, torch.Tensor] = {}  # term_normalization's floor flags, read with the shares (one host sync)
    total: torch.Tensor | None = None
    within_total: dict[str, torch.Tensor] = {}
    per_term: dict[str, torch.Tensor] = {}
    stats: dict[str, float] = {}
    penalties: dict[str, torch.Tensor] = {}
    for term in terms:
        ctx = TermContext(reducer=_checked_reducer(term), reducer_name=term.reducer_name, encoder=encoder,
                          cache=cache, ema_encoder=ema_encoder)
        with calling(term.who, "cost()"), _naming(term):
            out = term.impl.cost(src, tgt, ctx)
        n_src = _batch_size(src, term_keys(term, "src"))
        n_tgt = _batch_size(tgt, term_keys(term, "tgt"))
        m = _check_matrix(term, out, n_src, n_tgt)
        if isinstance(out, TermCost):
            with calling(term.who, "cost() stats"):
                stats.update({f"ot_{k}/{term.name}": float(v) for k, v in out.stats.items()})
        if total is not None and m.shape != total.shape:
            raise BatchError(f"term {term.name!r} gave a cost of shape {tuple(m.shape)} but earlier terms "
                             f"{tuple(total.shape)}: every term must see the same src/tgt batch sizes")
        m = _check_values(term, out, m)
        penalties.update(_check_penalties(term, out))
        per_term[term.name] = m
        scale = None
        if normalize_terms:
            scale = _term_divisor(term.name, m, term_refs, floored)
            m = m / scale
        weighted = term.weight * m
        contributions[term.name] = weighted.detach().mean()
        total = weighted if total is None else _add(total, weighted)
        if within:
            for side, batch in (("src", src), ("tgt", tgt)):
                wm = _within_cost(term, batch, side, ctx)
                if scale is not None:
                    wm = wm / scale.to(wm.dtype)
                prev = within_total.get(side)
                if prev is not None and wm.shape != prev.shape:
                    raise BatchError(f"term {term.name!r} gave a within-{side} cost of shape {tuple(wm.shape)} but "
                                     f"earlier terms {tuple(prev.shape)}")
                within_total[side] = term.weight * wm if prev is None else _add(prev, term.weight * wm)
    if total is None:
        raise OtplugError("the OT config has no terms")
    values = torch.stack([*contributions.values(), *floored.values()]).double().tolist()
    parts, flags = values[:len(contributions)], values[len(contributions):]
    total_share = sum(parts)
    shares = [p / total_share if total_share > 0 else 0.0 for p in parts]
    stats.update({f"ot_cost_share/{name}": share for name, share in zip(contributions, shares, strict=True)})
    stats.update({f"ot_term_scale_floored/{name}": flag for name, flag in zip(floored, flags, strict=True)})
    return CostBreakdown(total, per_term, stats, within_total, penalties)


def _term_divisor(name: str, m: torch.Tensor, refs: dict[str, float] | None,
                  floored: dict[str, torch.Tensor]) -> torch.Tensor:
    """The detached mean of a term's cost, floored at ``TERM_SCALE_FLOOR`` x its first mean (1 when all-zero);
    ``floored[name]`` is set to a 0-d tensor, 1 where the floor applied (no host sync here after the first call)."""
    scale = m.detach().mean()
    if refs is not None:
        ref = refs.get(name)
        if ref is None and float(scale) > 0:
            refs[name] = ref = float(scale)
        if ref is not None:
            floor = TERM_SCALE_FLOOR * ref
            floored[name] = (scale < floor).to(scale.dtype)
            scale = scale.clamp_min(floor)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype) + b.to(dtype)
