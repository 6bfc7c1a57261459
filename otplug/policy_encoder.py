"""Finding the encoder that gives a policy's own features (``encode_feature_for_ot(key, x)``).

Order: the object itself if it has ``encode_feature_for_ot``; the same after unwrapping DDP /
accelerate / ``torch.compile`` wrappers; otherwise the registered encoder adapter named by the policy's
``config.type`` (``otplug list-encoders``). Never a silent fallback to raw inputs.
"""

from __future__ import annotations

from typing import Any

from otplug.errors import OtplugError
from otplug.plugins import get_registry

__all__ = ["encode", "predict", "prediction_problem", "resolve_encoder", "unwrap_policy"]


#: submodules under which wrappers keep the wrapped model: ``torch.compile`` (``_orig_mod``), DDP / DataParallel /
#: DeepSpeed (``module``), FSDP (``_fsdp_wrapped_module``)
_WRAPPED_AT = ("_orig_mod", "module", "_fsdp_wrapped_module")


def unwrap_policy(obj: Any) -> Any:
    """Strip wrappers (DDP, DataParallel, DeepSpeed, FSDP, ``torch.compile``, or several) down to the policy itself.

    A torch module is unwrapped through its registered submodules ``_orig_mod`` / ``module`` /
    ``_fsdp_wrapped_module``; any other object only through a ``module`` attribute when it has no ``config`` of its
    own but the inner object has one. The one implementation used by the loss, the encoder adapters, the EMA
    encoder and training (instead of ``accelerator.unwrap_model``, which strips the same wrappers: on the policy
    that ``accelerator.prepare`` returned both give the same module, whose ``update()``, ``save_pretrained`` and
    parameters are the policy's). It never changes the model: ``accelerator.unwrap_model(model)`` with its default
    ``keep_fp32_wrapper=False`` (lerobot-train's call when saving) restores the model's original ``forward``,
    dropping the mixed-precision output cast for the rest of the run.
    """
    seen: set[int] = set()
    while id(obj) not in seen:
        seen.add(id(obj))
        inner = None
        modules = getattr(obj, "_modules", None)
        if isinstance(modules, dict):
            inner = next((modules[n] for n in _WRAPPED_AT if modules.get(n) is not None), None)
        elif not hasattr(obj, "config") and hasattr(getattr(obj, "module", None), "config"):
            inner = obj.module
        if inner is None:
            break
        obj = inner
    return obj


def resolve_encoder(obj: Any) -> Any:
    if obj is None:
        return None
    if any(hasattr(obj, m) for m in ("encode_feature_for_ot", "encode_side_for_ot", "predict_action_for_ot",
                                     "predict_side_for_ot")):
        return obj
    inner = unwrap_policy(obj)
    if hasattr(inner, "encode_feature_for_ot") or hasattr(inner, "predict_action_for_ot"):
        return inner
    policy_type = getattr(getattr(inner, "config", None), "type", None)
    if not isinstance(policy_type, str):
        raise OtplugError(
            f"{type(inner).__name__} has no encode_feature_for_ot(key, x) and no config.type naming a "
            "registered encoder adapter; give the policy that method or register an adapter "
            "(otplug list-encoders)"
        )
    record = get_registry().get("encoder", policy_type, field=f"encoder for policy type {policy_type!r}")
    return record.load()(inner)


def encode(encoder: Any, side: str, key: str, x: Any, name: str | None = None) -> Any:
    """Features of ``x`` = ``batch[key]`` of the ``side`` ("src" / "tgt") batch, for the encoder feature ``name``
    (default ``key``).

    An encoder that serves features by side and key (``encode_side_for_ot(side, key, x, name=...)``: the
    single-pass capture, the global-scope gatherer) gets the side; any other gets ``encode_feature_for_ot(name,
    x)``, the public contract of policies and adapters.
    """
    name = name or key
    by_side = getattr(encoder, "encode_side_for_ot", None)
    if by_side is not None:
        return by_side(side, key, x, name=name)
    return encoder.encode_feature_for_ot(name, x)


def predict(encoder: Any, side: str, batch: Any) -> Any:
    """The policy's predicted action chunk (B, T, D) on the observations of ``batch`` (the ``side`` batch), with
    gradients: ``predict_side_for_ot(side, batch)`` where the encoder serves by side (the single-pass layout), else
    ``predict_action_for_ot(batch)``, the public contract (docs/plugins.md)."""
    by_side = getattr(encoder, "predict_side_for_ot", None)
    if by_side is not None:
        return by_side(side, batch)
    fn = getattr(encoder, "predict_action_for_ot", None)
    if fn is None:
        raise OtplugError(prediction_problem(encoder) or "the encoder has no predict_action_for_ot(batch)")
    return fn(batch)


def prediction_problem(encoder: Any) -> str | None:
    """Why ``encoder`` cannot predict action chunks differentiably (one phrase), or None when it can: an adapter
    says so itself (``prediction_problem()``), anything else must have ``predict_action_for_ot``."""
    own = getattr(encoder, "prediction_problem", None)
    if callable(own):
        return own()
    if not (hasattr(encoder, "predict_action_for_ot") or hasattr(encoder, "predict_side_for_ot")):
        return (f"{type(encoder).__name__} has no predict_action_for_ot(batch) (the policy's action chunk on a batch "
                "of observations, differentiable; docs/plugins.md)")
    return None
