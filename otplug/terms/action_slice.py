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

    def cost(self, src, tgt, ctx: TermContext) -> TermCost:
        c = self.config
        src_pad, tgt_pad = c.pad_keys
        a = slice_last(read_value(src, c.src_key, "src"), c.dim_slice, c.src_key, "src").detach()
        b = slice_last(read_value(tgt, c.target_key, "tgt"), c.dim_slice, c.target_key, "tgt").detach()
        for side, x, key in (("src", a, c.src_key), ("tgt", b, c.target_key)):
            if x.ndim != 3:
                raise BatchError(f"action-slice needs {side} batch[{key!r}] as an action chunk (B, T, D), "
                                 f"got shape {tuple(x.shape)}")
        if a.shape[1:] != b.shape[1:]:
            raise BatchError(f"action-slice: src {c.src_key!r} has shape {tuple(a.shape)} but tgt "
                             f"{c.target_key!r} has {tuple(b.shape)} (chunk length and slice must match)")
        va = pad_mask(src, c.src_key, a, "src", src_pad)
        vb = pad_mask(tgt, c.target_key, b, "tgt", tgt_pad)
        va = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device) if va is None else va
        vb = torch.ones(b.shape[:2], dtype=torch.bool, device=b.device) if vb is None else vb
        if ctx.reducer_name == "flatten":
            dtype = torch.promote_types(a.dtype, b.dtype)
            m = masked_sq_dist(a.to(dtype), b.to(dtype), va, vb)
        else:
            x = ctx.reducer(a, va)
            y = ctx.reducer(b, vb)
            m = ctx.sq_dist(x, y, what=f"action-slice {c.src_key!r}")
        return TermCost(c.weight_label * m, {"label": m})
