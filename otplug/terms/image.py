"""``image``: one camera by its exact key; encoder embedding by default, raw pixels optionally."""

from __future__ import annotations

from otplug.errors import OtplugError
from otplug.features.extract import is_image_key
from otplug.terms.configs import ImageConfig
from otplug.terms.embedding import EmbeddingTerm


class ImageTerm(EmbeddingTerm):
    def __init__(self, config: ImageConfig) -> None:
        for key in (config.src_key, config.target_key):
            if not is_image_key(key):
                raise OtplugError(
                    f"image term needs a camera key such as 'observation.images.front', got {key!r} "
                    "(use the 'embedding' or 'label' term for other features)"
                )
        super().__init__(config)

    def _learned(self) -> bool:
        return self.config.use_learned_embed and self.config.weight_embed > 0
