"""Finding the encoder that gives a policy's own features (``encode_feature_for_ot(key, x)``).

Order: the object itself if it has ``encode_feature_for_ot``; the same after unwrapping DDP /
accelerate / ``torch.compile`` wrappers; otherwise the registered encoder adapter named by the policy's
``config.type`` (``otplug list-encoders``). Never a silent fallback to raw inputs.
"""

from __future__ import annotations

from typing import Any

from otplug.errors import OtplugError
from otplug.plugins import get_registry

__all__ = ["resolve_encoder", "unwrap_policy"]


def unwrap_policy(obj: Any) -> Any:
    """Strip ``DistributedDataParallel``/``DataParallel`` (``.module``) and compiled (``._orig_mod``) wrappers."""
    seen = set()
    while id(obj) not in seen:
        seen.add(id(obj))
        inner = getattr(obj, "_orig_mod", None) or (getattr(obj, "module", None) if _is_wrapper(obj) else None)
        if inner is None:
            break
        obj = inner
    return obj


def _is_wrapper(obj: Any) -> bool:
    name = type(obj).__name__
    return name in {"DistributedDataParallel", "DataParallel", "FullyShardedDataParallel"} or (
        hasattr(obj, "module") and not hasattr(obj, "config") and hasattr(getattr(obj, "module"), "config")
    )


def resolve_encoder(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "encode_feature_for_ot"):
        return obj
    inner = unwrap_policy(obj)
    if hasattr(inner, "encode_feature_for_ot"):
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
