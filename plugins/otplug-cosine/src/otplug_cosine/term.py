"""The cost term itself: ``M_ij = scale * (1 - cos(f(src_i), f(tgt_j)))``."""

import torch

from otplug_cosine.config import CosineConfig


class CosineTerm:
    def __init__(self, config: CosineConfig) -> None:
        self.config = config

    def required_keys(self, side):
        return {self.config.src_key if side == "src" else self.config.target_key}

    def embedding_keys(self):
        c = self.config
        return {c.src_key, c.target_key} if c.use_learned_embed else set()

    def cost(self, src, tgt, ctx):
        c = self.config
        if c.use_learned_embed:
            x = ctx.embed(src, c.src_key, "src", embed_name=c.embed_name)
            y = ctx.embed(tgt, c.target_key, "tgt", embed_name=c.embed_name)
        else:
            x = ctx.label(src, c.src_key, "src")
            y = ctx.label(tgt, c.target_key, "tgt")
        x = torch.nn.functional.normalize(x, dim=-1)
        y = torch.nn.functional.normalize(y, dim=-1)
        return c.scale * (1.0 - x @ y.T)
