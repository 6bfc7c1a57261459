"""Time reducers (registered as plugins ``flatten``, ``first``, ``last``, ``mean``).

A reducer is ``fn(x, mask) -> (B, F)``: ``x`` is (B, S, ...) with a time axis, ``mask`` a (B, S) boolean
*valid-step* mask or None. Features without a time axis are only flattened (see :func:`reduce_time`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["first", "flatten", "last", "mean", "reduce_time"]

Reducer = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def flatten(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S, ...) -> (B, S*...): the seed's rule. Padded steps are kept, as in the seed and robomimic's
    ``view(B, -1)`` (use the ``action-slice`` term to exclude padded action steps)."""
    return x.reshape(x.shape[0], -1)


def _pick(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, idx].reshape(x.shape[0], -1)


def first(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first valid step (the first step when there is no mask)."""
    if mask is None:
        return x[:, 0].reshape(x.shape[0], -1)
    idx = torch.argmax(mask.to(torch.int8), dim=1)  # first True; 0 when a row is all padded
    return _pick(x, idx)


def last(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last valid step (the last step when there is no mask)."""
    if mask is None:
        return x[:, -1].reshape(x.shape[0], -1)
    steps = torch.arange(x.shape[1], device=x.device)
    idx = torch.where(mask, steps, torch.zeros_like(steps)).amax(dim=1)
    return _pick(x, idx)


def mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over valid steps (over all steps when there is no mask)."""
    if mask is None:
        return x.mean(dim=1).reshape(x.shape[0], -1)
    w = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.ndim - 2)))
    return ((x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)).reshape(x.shape[0], -1)


def reduce_time(x: torch.Tensor, reducer: Reducer, *, time_axis: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``reducer`` when ``x`` has a time axis; otherwise flatten outside the batch axis."""
    if not time_axis:
        return x.reshape(x.shape[0], -1)
    return reducer(x, mask)
