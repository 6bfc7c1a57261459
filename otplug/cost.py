"""Composing the cost matrix: ``M = sum_k term_weight_k * M_term_k`` (step 3 of
features -> terms -> M -> solver -> loss -> sinks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from otplug.errors import BatchError, OtplugError
from otplug.terms.base import TermContext, TermCost

__all__ = ["BoundTerm", "CostBreakdown", "compose_cost"]


@attrs.frozen
class BoundTerm:
    """A built term with its name, outer weight and time reducer."""

    name: str
    type: str
    weight: float
    impl: Any
    reducer: Any
    reducer_name: str


@attrs.frozen
class CostBreakdown:
    matrix: torch.Tensor
    terms: dict[str, torch.Tensor]  # M_term (before term_weight) per term name
    stats: dict[str, float] = attrs.field(factory=dict)  # metric name -> value, from the terms' stats


def compose_cost(terms: list[BoundTerm], src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor],
                 encoder: Any) -> CostBreakdown:
    cache: dict = {}
    total: torch.Tensor | None = None
    per_term: dict[str, torch.Tensor] = {}
    stats: dict[str, float] = {}
    for term in terms:
        ctx = TermContext(reducer=term.reducer, reducer_name=term.reducer_name, encoder=encoder, cache=cache)
        out = term.impl.cost(src, tgt, ctx)
        m = out.matrix if isinstance(out, TermCost) else out
        if isinstance(out, TermCost):
            stats.update({f"ot_{k}/{term.name}": float(v) for k, v in out.stats.items()})
        if not isinstance(m, torch.Tensor) or m.ndim != 2:
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise OtplugError(f"term {term.name!r} ({term.type}) must return an (n_src, n_tgt) tensor, got {got}")
        if total is not None and m.shape != total.shape:
            raise BatchError(f"term {term.name!r} gave a cost of shape {tuple(m.shape)} but earlier terms "
                             f"{tuple(total.shape)}: every term must see the same src/tgt batch sizes")
        if not bool(torch.isfinite(m.detach()).all()):
            raise BatchError(f"term {term.name!r} produced non-finite costs (shape {tuple(m.shape)})")
        per_term[term.name] = m
        weighted = term.weight * m
        if total is None:
            total = weighted
        else:
            dtype = torch.promote_types(total.dtype, weighted.dtype)
            total = total.to(dtype) + weighted.to(dtype)
    if total is None:
        raise OtplugError("the OT config has no terms")
    return CostBreakdown(total, per_term, stats)
