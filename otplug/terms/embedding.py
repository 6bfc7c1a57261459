"""``embedding``: ``M = weight_embed * cdist(enc(src), enc(tgt))**2 + weight_label * cdist(src, tgt)**2``.

The embedding part carries gradients into the policy's encoder; ``dim_slice`` applies to the raw (label)
values only, because the encoder needs its native input.
"""

from __future__ import annotations

import torch

from otplug.terms.base import TermContext, TermCost
from otplug.terms.configs import EmbeddingConfig


class EmbeddingTerm:
    uses_encoder = True

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config

    def required_keys(self, side: str) -> set[str]:
        return {self.config.src_key if side == "src" else self.config.target_key}

    def raw_keys(self, side: str) -> set[str]:
        """Keys whose raw values this term reads (the label part); embedding-only terms need none."""
        return self.required_keys(side) if self.config.weight_label > 0 or not self._learned() else set()

    def embedding_keys(self) -> set[str]:
        return {self.config.src_key, self.config.target_key} if self._learned() else set()

    def _learned(self) -> bool:
        return self.config.weight_embed > 0

    def cost(self, src, tgt, ctx: TermContext) -> TermCost:
        c = self.config
        parts = {}
        stats: dict[str, float] = {}
        total = None
        if self._learned():
            x = ctx.embed(src, c.src_key, "src", embed_name=c.embed_name)
            y = ctx.embed(tgt, c.target_key, "tgt", embed_name=c.embed_name)
            with torch.no_grad():  # watch for scale collapse: OT alone rewards shrinking every feature
                stats["embed_scale"] = float(torch.cat([x, y.to(x.dtype)]).pow(2).sum(-1).mean())
            if c.embed_norm == "l2":
                x = torch.nn.functional.normalize(x, dim=-1)
                y = torch.nn.functional.normalize(y, dim=-1)
            m_embed = ctx.sq_dist(x, y, what=f"embedding {c.src_key!r}/{c.target_key!r}")
            parts["embed"] = m_embed
            total = c.weight_embed * m_embed
        if c.weight_label > 0:
            x = ctx.label(src, c.src_key, "src", dim_slice=c.dim_slice)
            y = ctx.label(tgt, c.target_key, "tgt", dim_slice=c.dim_slice)
            m_label = ctx.sq_dist(x, y, what=f"label {c.src_key!r}/{c.target_key!r}")
            parts["label"] = m_label
            weighted = c.weight_label * m_label
            total = weighted if total is None else total + weighted.to(total.dtype)
        return TermCost(total, parts, stats)
