"""``image``: one camera by its exact key; encoder embedding by default, raw pixels optionally."""

from __future__ import annotations

from otplug.terms.embedding import EmbeddingTerm


class ImageTerm(EmbeddingTerm):
    """Camera keys are checked by :class:`~otplug.terms.configs.ImageConfig` (so ``otplug check-config`` reports them)."""

    def _learned(self) -> bool:
        return self.config.use_learned_embed and self.config.weight_embed > 0
