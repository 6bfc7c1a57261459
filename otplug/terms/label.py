"""``label``: ``M = weight_label * cdist(src, tgt)**2`` on raw (detached) batch values."""

from __future__ import annotations

from otplug.terms.base import TermContext, TermCost
from otplug.terms.configs import LabelConfig


class LabelTerm:
    def __init__(self, config: LabelConfig) -> None:
        self.config = config

    def required_keys(self, side: str) -> set[str]:
        return {self.config.src_key if side == "src" else self.config.target_key}

    def cost(self, src, tgt, ctx: TermContext) -> TermCost:
        c = self.config
        x = ctx.label(src, c.src_key, "src", dim_slice=c.dim_slice)
        y = ctx.label(tgt, c.target_key, "tgt", dim_slice=c.dim_slice)
        m = ctx.sq_dist(x, y, what=f"label {c.src_key!r}/{c.target_key!r}")
        return TermCost(c.weight_label * m, {"label": m})

    def within_cost(self, batch, side: str, ctx: TermContext) -> TermCost:
        """The same cost between the samples of one side, (n, n) (for ``debias = true``)."""
        c = self.config
        key = c.src_key if side == "src" else c.target_key
        x = ctx.label(batch, key, side, dim_slice=c.dim_slice)
        m = ctx.sq_dist(x, x, what=f"label {key!r}")
        return TermCost(c.weight_label * m, {"label": m})
