"""The seed design's config format (``features: [OTFeatureSpec, ...]``), read with exactly its meaning.

Each feature becomes one native term::

    use_learned_embed: true  -> type "embedding", EmbeddingConfig(src_key, tgt_key, dim_slice, embed_name,
                                                                 weight_embed, weight_label)
    use_learned_embed: false -> type "label", LabelConfig(src_key, tgt_key, dim_slice, weight_label)
                                (weight_embed and embed_name are ignored, as in the seed)
    name = term_name (default: src_key), weight = term_weight (default 1)

so that ``M = sum_k term_weight_k * (weight_embed_k * M_embed_k + weight_label_k * M_label_k)``.
"""

from __future__ import annotations

from typing import Any

import attrs

from otplug.validators import batch_key as non_empty_key
from otplug.validators import dim_slice as check_dim_slice
from otplug.validators import non_negative

__all__ = ["SEED_TOP_LEVEL_KEYS", "SeedFeature"]

SEED_TOP_LEVEL_KEYS = ("features", "reg", "tau_src", "tau_tgt", "heuristic")


def _to_slice(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class SeedFeature:
    """One ``OTFeatureSpec`` of the seed format (defaults as in the seed)."""

    src_key: str = attrs.field(validator=non_empty_key)
    tgt_key: str | None = attrs.field(default=None, validator=non_empty_key)
    dim_slice: tuple[int, ...] | None = attrs.field(default=None, converter=_to_slice, validator=check_dim_slice)
    use_learned_embed: bool = False
    embed_name: str | None = attrs.field(default=None, validator=non_empty_key)
    weight_embed: float = attrs.field(default=1.0, validator=non_negative)
    weight_label: float = attrs.field(default=1.0, validator=non_negative)
    term_name: str | None = None
    term_weight: float = 1.0
    time_reduce: str | None = None  # extension: the seed's planned per-feature time_reduce

    @property
    def term_type(self) -> str:
        return "embedding" if self.use_learned_embed else "label"

    def option_fields(self) -> dict[str, Any]:
        """The fields of the native term's config class, as a table."""
        out: dict[str, Any] = {"src_key": self.src_key}
        if self.tgt_key is not None:
            out["tgt_key"] = self.tgt_key
        if self.dim_slice is not None:
            out["dim_slice"] = list(self.dim_slice)
        if self.use_learned_embed:
            if self.embed_name is not None:
                out["embed_name"] = self.embed_name
            out["weight_embed"] = self.weight_embed
        out["weight_label"] = self.weight_label
        return out

    def contributes_why_not(self) -> str | None:
        if self.use_learned_embed:
            if self.weight_embed == 0 and self.weight_label == 0:
                return "contributes nothing: weight_embed and weight_label are both 0"
            return None
        if self.weight_label == 0:
            return (
                "contributes nothing: use_learned_embed is false, so only the label cost counts, and weight_label "
                "is 0 (weight_embed is ignored without use_learned_embed)"
            )
        return None
