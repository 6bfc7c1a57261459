"""Config classes of the built-in cost terms (torch-free: the config loader imports them).

In a native config a term is one table: the common keys ``type`` (the registered term), ``name`` (unique,
used in ``ot_cost/<name>``), ``weight`` (the seed's ``term_weight``) and optional ``time_reduce``, plus the
fields of the term's config class below. Validation messages are phrased for users; the config loader
prefixes them with the path to the field.
"""

from __future__ import annotations

import attrs

from otplug import validators as v
from otplug.validators import batch_key as non_empty_key
from otplug.validators import dim_slice as check_dim_slice
from otplug.validators import non_negative

__all__ = [
    "GRAD_SIDES",
    "STOPGRAD_ENCODERS",
    "ActionSliceConfig",
    "EmbeddingConfig",
    "FeatureConfig",
    "ImageConfig",
    "JointConfig",
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


#: ``grad``: which side's encoder features receive gradients (the other side's are a constant)
GRAD_SIDES = ("both", "source", "target")
#: ``stopgrad_encoder``: who computes the features of the side that gets no gradient
STOPGRAD_ENCODERS = ("policy", "ema")


def _needs_embedding(instance, attribute, value) -> None:
    """A cross-field check: the option only acts on learned embeddings. (Without an instance it is skipped:
    the loader runs it again once the whole term is built.)"""
    if instance is None:
        raise AttributeError("needs the instance")
    if value != attribute.default and not instance.learned():
        raise v.FieldValueError("acts on the policy's encoder features, but this term has none "
                                f"({instance.why_no_embedding()}); remove it or give the term an embedding",
                                attribute.name)


def _stopgrad_encoder(instance, attribute, value) -> None:
    if instance is None:
        raise AttributeError("needs the instance")
    if value == "ema" and instance.grad == "both":
        raise v.FieldValueError("'ema' computes the features of the side that gets no gradient, but grad = 'both' "
                                "has no such side: set grad = 'source' (target features from the EMA encoder) or "
                                "grad = 'target'", attribute.name)


def _variance_weight(instance, attribute, value) -> None:
    if instance is None:
        raise AttributeError("needs the instance")
    if value == 0 and instance.variance_floor > 0:
        raise v.FieldValueError(f"is 0, so variance_floor = {instance.variance_floor:g} does nothing; give it a "
                                "weight > 0 or remove variance_floor", attribute.name)


@attrs.frozen(kw_only=True)
class EmbeddingConfig(FeatureConfig):
    """``embedding``: ``M = weight_embed * cdist(enc(src), enc(tgt))**2 + weight_label * label cost``.

    ``embed_name`` is passed to the encoder instead of the batch key when set (the seed's field).

    Options against scale collapse (OT alone rewards shrinking every feature; ``docs/math.md``):

    * ``embed_norm = "l2"`` compares unit-length embeddings (``|f/|f| - g/|g||^2 = 2 - 2 cos``), with
      gradients through the normalisation: the encoder can no longer lower the cost by shrinking features.
    * ``grad = "source" | "target"``: only that side's features receive gradients; the other side's are a
      constant -- the policy's own features detached (``stopgrad_encoder = "policy"``) or the features of an
      EMA copy of the policy (``stopgrad_encoder = "ema"``, given to the loss as ``ema_encoder``).
    * ``variance_floor`` (gamma), ``variance_weight``, ``covariance_weight``: a VICReg-style regulariser on the
      compared features of src and tgt together, added to the loss (not to M).
    * ``scale_anchor`` (weight): ``scale_anchor * log(s / s0)^2`` added to the loss, with ``s`` the mean squared
      norm of the encoder features (src and tgt, before ``embed_norm``) and ``s0`` its value at the term's first
      call (kept with the checkpoint): the features' scale can neither shrink (plain cost) nor grow (a free
      direction under ``embed_norm = "l2"``) without a cost.

    ``distance = "euclidean"`` uses ``cdist(enc(src), enc(tgt))`` (not squared) for the embedding part: with
    ``debias = true`` and the independent coupling (a large ``reg``) the loss is then the energy distance, the
    MMD of the paper's baseline (``docs/math.md`` §7.5; equal to geomloss's ``SamplesLoss("energy")``, tested).
    """

    embed_name: str | None = attrs.field(default=None, validator=non_empty_key)
    weight_embed: float = attrs.field(default=1.0, validator=non_negative)
    weight_label: float = attrs.field(default=0.0, validator=non_negative)
    embed_norm: str = attrs.field(default="none", validator=v.one_of("none", "l2"))
    grad: str = attrs.field(default="both", validator=[v.one_of(GRAD_SIDES), _needs_embedding])
    stopgrad_encoder: str = attrs.field(default="policy", validator=[v.one_of(STOPGRAD_ENCODERS),
                                                                      _stopgrad_encoder])
    variance_floor: float = attrs.field(default=0.0, validator=[non_negative, _needs_embedding])
    variance_weight: float = attrs.field(default=1.0, validator=[non_negative, _variance_weight])
    covariance_weight: float = attrs.field(default=0.0, validator=[non_negative,
                                                                    _needs_embedding])
    scale_anchor: float = attrs.field(default=0.0, validator=[non_negative, _needs_embedding])
    distance: str = attrs.field(default="sqeuclidean", validator=v.one_of("sqeuclidean", "euclidean"))

    def contributes(self) -> bool:
        return self.weight_embed > 0 or self.weight_label > 0

    def learned(self) -> bool:
        """Whether the term compares the policy's encoder features."""
        return self.weight_embed > 0

    def why_no_embedding(self) -> str:
        return "weight_embed = 0"

    def frozen_side(self, side: str) -> bool:
        """Whether ``side`` ("src" / "tgt") gets no gradient."""
        return self.grad != "both" and self.grad != {"src": "source", "tgt": "target"}[side]

    def uses_ema(self) -> bool:
        return self.learned() and self.grad != "both" and self.stopgrad_encoder == "ema"


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

    def learned(self) -> bool:
        return self.use_learned_embed and self.weight_embed > 0

    def why_no_embedding(self) -> str:
        return "use_learned_embed = false" if not self.use_learned_embed else "weight_embed = 0"


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


@attrs.frozen(kw_only=True)
class JointConfig:
    """``joint``: the joint-distribution cost of DeepJDOT / JUMBOT for policies, needing no target actions:
    ``M_ij = weight_embed * |g(x_i^s) - g(x_j^t)|^2 + weight_label * sum_t v_it |a_i^s[t] - f(x_j^t)[t]|^2``,
    ``g`` the policy's encoder features of ``src_key`` (a camera, or any key with an encoder), ``a^s`` the source
    row's action chunk (``action_key``, detached; ``v`` its valid steps), ``f(x^t)`` the policy's *predicted* action
    chunk on the target row (the encoder contract's ``predict_action_for_ot``, with gradient into the policy unless
    ``stopgrad_prediction``). docs/math.md §8."""

    src_key: str = attrs.field(validator=non_empty_key)
    tgt_key: str | None = attrs.field(default=None, validator=non_empty_key)
    embed_name: str | None = attrs.field(default=None, validator=non_empty_key)
    weight_embed: float = attrs.field(default=1.0, validator=non_negative)
    action_key: str = attrs.field(default="action", validator=non_empty_key)
    weight_label: float = attrs.field(default=1.0, validator=non_negative)
    #: the prediction as a constant (no gradient into the policy through the label part)
    stopgrad_prediction: bool = False
    #: a last-axis slice of the action chunk, applied to the source actions and the prediction alike
    dim_slice: tuple[int, ...] | None = attrs.field(default=None, converter=_to_slice, validator=check_dim_slice)
    pad_key: str | None = attrs.field(default=None, validator=non_empty_key)

    def __attrs_post_init__(self) -> None:
        if self.weight_embed == 0 and self.weight_label == 0:
            raise v.FieldValueError("weight_embed and weight_label are both 0: the term would compare nothing",
                                    "weight_label")

    @property
    def target_key(self) -> str:
        return self.tgt_key if self.tgt_key is not None else self.src_key

    @property
    def src_pad_key(self) -> str:
        return self.pad_key if self.pad_key is not None else f"{self.action_key}_is_pad"

    def contributes(self) -> bool:
        return True
