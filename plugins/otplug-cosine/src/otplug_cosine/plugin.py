"""The plugin module named by the entry point. Keep it light: no torch import here, so that
``otplug list-terms`` stays fast -- the term class is referenced lazily by a "module:attr" string."""

import otplug

from otplug_cosine.config import CosineConfig


@otplug.hookimpl
def otplug_cost_terms():
    return [
        otplug.CostTerm(
            name="cosine",
            factory="otplug_cosine.term:CosineTerm",
            config_cls=CosineConfig,
            summary="1 - cosine similarity of the policy's embeddings (scale-free; example plugin)",
        )
    ]
