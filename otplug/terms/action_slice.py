"""``action-slice``: action chunks (B, T, D), a last-axis slice, padded steps excluded.

For flatten (the default) the cost sums over the steps valid in *both* samples:
``M_ij = sum_t v_it w_jt |a_it - b_jt|^2`` with v, w the valid-step masks (``not action_is_pad``);
without padding this equals ``cdist(flat(a), flat(b))**2``. Other time reducers use the masks to pick or
average valid steps.
"""

from __future__ import annotations

import torch

from otplug.errors import BatchError
from otplug.features.extract import pad_mask, read_value, slice_last
from otplug.terms.base import TermContext, TermCost
from otplug.terms.configs import ActionSliceConfig


def masked_sq_dist(a: torch.Tensor, b: torch.Tensor, va: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """``sum_t va[i,t] vb[j,t] |a[i,t] - b[j,t]|^2`` for a (n,T,D), b (m,T,D)."""
    va = va.to(a.dtype)
    vb = vb.to(a.dtype)
    a2 = (a.pow(2).sum(-1) * va)  # (n, T)
    b2 = (b.pow(2).sum(-1) * vb)  # (m, T)
    cross = torch.einsum("itd,jtd,it,jt->ij", a, b, va, vb)
    return (a2 @ vb.T + va @ b2.T - 2.0 * cross).clamp_min(0.0)


class ActionSliceTerm:
    def __init__(self, config: ActionSliceConfig) -> None:
        self.config = config

    def required_keys(self, side: str) -> set[str]:
        c = self.config
        return {c.src_key if side == "src" else c.target_key}

    def optional_keys(self, side: str) -> set[str]:
        src_pad, tgt_pad = self.config.pad_keys
        return {src_pad if side == "src" else tgt_pad}

    def _side(self, batch, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The side's sliced action chunk (B, T, D), detached, and its valid-step mask (B, T)."""
        c = self.config
        key = c.src_key if side == "src" else c.target_key
        pad = c.pad_keys[0 if side == "src" else 1]
        a = slice_last(read_value(batch, key, side), c.dim_slice, key, side).detach()
        if a.ndim != 3:
            raise BatchError(f"action-slice needs {side} batch[{key!r}] as an action chunk (B, T, D), "
                             f"got shape {tuple(a.shape)}")
        va = pad_mask(batch, key, a, side, pad)
        va = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device) if va is None else va
        return a, va

    def _dist(self, a, b, va, vb, ctx: TermContext, what: str) -> torch.Tensor:
        if ctx.reducer_name == "flatten":
            dtype = torch.promote_types(a.dtype, b.dtype)
            return masked_sq_dist(a.to(dtype), b.to(dtype), va, vb)
        return ctx.sq_dist(ctx.reducer(a, va), ctx.reducer(b, vb), what=what)

    def cost(self, src, tgt, ctx: TermContext) -> TermCost:
        c = self.config
        a, va = self._side(src, "src")
        b, vb = self._side(tgt, "tgt")
        if a.shape[1:] != b.shape[1:]:
            raise BatchError(f"action-slice: src {c.src_key!r} has shape {tuple(a.shape)} but tgt "
                             f"{c.target_key!r} has {tuple(b.shape)} (chunk length and slice must match)")
        m = self._dist(a, b, va, vb, ctx, f"action-slice {c.src_key!r}")
        return TermCost(c.weight_label * m, {"label": m})

    def within_cost(self, batch, side: str, ctx: TermContext) -> TermCost:
        """The same cost between the samples of one side, (n, n) (for ``debias = true``)."""
        c = self.config
        a, va = self._side(batch, side)
        key = c.src_key if side == "src" else c.target_key
        m = self._dist(a, a, va, va, ctx, f"action-slice {key!r}")
        return TermCost(c.weight_label * m, {"label": m})
