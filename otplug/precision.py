"""Mixed precision at the OT boundary: low-precision features in, a float32 plan and loss out.

Under autocast (``--policy.use_amp``, accelerate's ``mixed_precision``) or with a bf16/fp16 policy, the policy's
features reach the OT side in bfloat16 or float16. Solving the plan there is wrong: bf16 keeps 8 bits of mantissa,
so ``exp(-M / reg)`` at ``reg = 0.01`` rounds away the differences Sinkhorn iterates on (issue #28 measured the
built-in solver stopping unconverged after 5000 iterations where float32 converges). :class:`OTLoss
<otplug.loss.OTLoss>` therefore runs its own arithmetic -- the terms' costs, M, the plan, the loss, the penalties,
the diagnostics -- with autocast **off** and every low-precision tensor cast up to float32
(:data:`MIN_COST_DTYPE`), while the encoder's forward still runs under the caller's autocast
(:class:`AutocastEncoder`: the fast path stays fast). ``Tensor.float()`` is differentiable, so the gradient of the
float32 loss flows back into the bf16 features unchanged in direction (rounded to bf16 on the way in, as any
autocast gradient is). A solver may ask for more than float32 (``Solver(dtype="float64")``: POT's NumPy path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["LOW_PRECISION", "MIN_COST_DTYPE", "AutocastEncoder", "autocast_states", "full_precision", "upcast",
           "upcast_batch"]

#: dtypes the OT side never computes in
LOW_PRECISION = (torch.float16, torch.bfloat16)
#: the lowest dtype of the costs, the plan and the loss
MIN_COST_DTYPE = torch.float32
#: device types whose autocast state is saved and restored (those torch knows on this build)
_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu")


def autocast_states() -> list[tuple[str, torch.dtype]]:
    """``(device type, autocast dtype)`` for every device type where autocast is on here."""
    out = []
    for dev in _DEVICE_TYPES:
        try:
            if torch.is_autocast_enabled(dev):
                out.append((dev, torch.get_autocast_dtype(dev)))
        except (RuntimeError, TypeError, AttributeError):  # a device type this build does not know
            continue
    return out


@contextlib.contextmanager
def full_precision() -> Iterator[list[tuple[str, torch.dtype]]]:
    """Autocast off wherever it is on; yields the states that were on (for :class:`AutocastEncoder`)."""
    states = autocast_states()
    with contextlib.ExitStack() as stack:
        for dev, _ in states:
            stack.enter_context(torch.autocast(dev, enabled=False))
        yield states


@contextlib.contextmanager
def _restored(states: list[tuple[str, torch.dtype]]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for dev, dtype in states:
            stack.enter_context(torch.autocast(dev, dtype=dtype, enabled=True))
        yield


def upcast(x: Any) -> Any:
    """``x`` with every float16/bfloat16 tensor cast to float32 (differentiably); dicts, lists and tuples walked."""
    if isinstance(x, torch.Tensor):
        return x.to(MIN_COST_DTYPE) if x.dtype in LOW_PRECISION else x
    if isinstance(x, Mapping):
        return {k: upcast(v) for k, v in x.items()}
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(upcast(v) for v in x)
    if isinstance(x, list):
        return [upcast(v) for v in x]
    return x


def upcast_batch(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The batch itself when nothing in it is low precision, else a shallow copy with those values upcast."""
    if not any(isinstance(v, torch.Tensor) and v.dtype in LOW_PRECISION for v in batch.values()):
        return batch
    return {k: upcast(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class AutocastEncoder:
    """An encoder whose forward runs under the autocast states the OT loss was called with, and whose features come
    back in float32. Every other attribute is the wrapped encoder's (``capture_spec``, a policy's ``config``...)."""

    def __init__(self, inner: Any, states: list[tuple[str, torch.dtype]]) -> None:
        self._inner = inner
        self._states = list(states)

    @property
    def inner(self) -> Any:
        return self._inner

    def encode_feature_for_ot(self, name: str, x: Any) -> Any:
        with _restored(self._states):
            out = self._inner.encode_feature_for_ot(name, x)
        return upcast(out)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)  # AttributeError when the inner encoder lacks it, as hasattr expects
        if name in ("encode_side_for_ot", "predict_action_for_ot", "predict_side_for_ot") and callable(attr):
            def call(*args: Any, **kwargs: Any) -> Any:
                with _restored(self._states):
                    out = attr(*args, **kwargs)
                return upcast(out)
            return call
        return attr
