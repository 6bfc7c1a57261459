"""Config classes of the built-in cost terms (torch-free: the config loader imports them).

In a native config a term is one table: the common keys ``type`` (the registered term), ``name`` (unique,
used in ``ot_cost/<name>``), ``weight`` (the seed's ``term_weight``) and optional ``time_reduce``, plus the
fields of the term's config class below. Validation messages are phrased for users; the config loader
prefixes them with the path to the field.
"""

from __future__ import annotations

import attrs

from otplug.config import validators as v
from otplug.config.validators import batch_key as non_empty_key
from otplug.config.validators import dim_slice as check_dim_slice
from otplug.config.validators import non_negative

__all__ = [
    "ActionSliceConfig",
    "EmbeddingConfig",
    "FeatureConfig",
    "ImageConfig",
    "LabelConfig",
    "non_negative",
    "check_dim_slice",
]


def camera_key(instance, attribute, value) -> None:
    # the prefix of otplug.features.extract.is_image_key (this module stays torch-free)
    if value is not None and isinstance(value, str) and not value.startswith("observation.image"):
        raise ValueError(f"must be a camera key such as 'observation.images.front', got {v.show_value(value)} (use the "
                         "'embedding' or 'label' term for other features)")


def _to_slice(value):
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class FeatureConfig:
    """Shared fields: which batch keys to compare and which part of the last axis."""

    src_key: str = attrs.field(validator=non_empty_key)
    tgt_key: str | None = attrs.field(default=None, validator=non_empty_key)
    # tuple[int, ...] so that a wrong length reaches check_dim_slice and its message ([start, stop])
    dim_slice: tuple[int, ...] | None = attrs.field(default=None, converter=_to_slice, validator=check_dim_slice)

    @property
    def target_key(self) -> str:
        return self.tgt_key if self.tgt_key is not None else self.src_key

    def contributes(self) -> bool:
        return True


@attrs.frozen(kw_only=True)
class LabelConfig(FeatureConfig):
    """``label``: raw values (detached), ``M = weight_label * cdist(src, tgt)**2``."""

    weight_label: float = attrs.field(default=1.0, validator=non_negative)

    def contributes(self) -> bool:
        return self.weight_label > 0


@attrs.frozen(kw_only=True)
class EmbeddingConfig(FeatureConfig):
    """``embedding``: ``M = weight_embed * cdist(enc(src), enc(tgt))**2 + weight_label * label cost``.

    ``embed_name`` is passed to the encoder instead of the batch key when set (the seed's field).
    ``embed_norm = "l2"`` compares unit-length embeddings (``|f/|f| - g/|g||^2 = 2 - 2 cos``): the encoder
    can no longer lower the cost by shrinking all features (OT alone rewards that scale collapse).
    """

    embed_name: str | None = attrs.field(default=None, validator=non_empty_key)
    weight_embed: float = attrs.field(default=1.0, validator=non_negative)
    weight_label: float = attrs.field(default=0.0, validator=non_negative)
    embed_norm: str = attrs.field(default="none", validator=v.one_of("none", "l2"))

    def contributes(self) -> bool:
        return self.weight_embed > 0 or self.weight_label > 0


@attrs.frozen(kw_only=True)
class ImageConfig(EmbeddingConfig):
    """``image``: one camera, by its exact key (``observation.images.<camera>``); embedding by default.

    ``use_learned_embed = false`` with ``weight_label > 0`` compares raw pixels instead.
    """

    src_key: str = attrs.field(validator=[non_empty_key, camera_key])
    tgt_key: str | None = attrs.field(default=None, validator=[non_empty_key, camera_key])
    use_learned_embed: bool = True

    def contributes(self) -> bool:
        return (self.use_learned_embed and self.weight_embed > 0) or self.weight_label > 0


@attrs.frozen(kw_only=True)
class ActionSliceConfig(LabelConfig):
    """``action-slice``: action chunks (B, T, D); steps padded in either sample (``pad_key``) are excluded."""

    src_key: str = attrs.field(default="action", validator=non_empty_key)
    pad_key: str | None = attrs.field(default=None, validator=non_empty_key)

    @property
    def pad_keys(self) -> tuple[str, str]:
        if self.pad_key is not None:
            return self.pad_key, self.pad_key
        return f"{self.src_key}_is_pad", f"{self.target_key}_is_pad"
