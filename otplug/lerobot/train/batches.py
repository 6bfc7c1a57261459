"""Batch plumbing of the training step: the uint8 -> float image step, row concatenation, row slices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from otplug.errors import OtplugError

__all__ = ["concat_batches", "images_to_float", "rows"]


def images_to_float(batch: dict[str, Any], camera_keys: Sequence[str]) -> dict[str, Any]:
    """lerobot-train's uint8 -> float32 [0, 1] step (in place, like lerobot)."""
    for key in camera_keys:
        if key in batch and batch[key].dtype == torch.uint8:
            batch[key] = batch[key].to(dtype=torch.float32) / 255.0
    return batch


def concat_batches(parts: Sequence[Mapping[str, Any]], required: Sequence[str] = ()) -> dict[str, Any]:
    """Row-concatenate collated lerobot batches on their common keys (tensors by ``cat``, lists by ``+``).

    ``required`` keys must be in every part (named with the part that lacks them); tensors must agree in every
    dimension but the first, and in dtype (a uint8 part beside a float part would be promoted silently and skip
    the image step).
    """
    common = set(parts[0])
    for p in parts[1:]:
        common &= set(p)
    missing = sorted(k for k in required if k not in common)
    if missing:
        sides = [sorted(k for k in missing if k not in p) for p in parts]
        raise OtplugError(f"single-pass layout: key(s) {missing} missing from part of the batch "
                          f"([src, tgt, bc] lack {sides}); the source dataset must have the policy's features")
    out: dict[str, Any] = {}
    for k in parts[0]:
        if k not in common:
            continue
        vals = [p[k] for p in parts]
        if isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape[1:]) for v in vals}
            if len(shapes) != 1:
                raise OtplugError(f"single-pass layout: {k!r} has different shapes across [src, tgt, bc]: "
                                  f"{[tuple(v.shape) for v in vals]}")
            dtypes = {v.dtype for v in vals}
            if len(dtypes) != 1:
                raise OtplugError(f"single-pass layout: {k!r} has different dtypes across [src, tgt, bc]: "
                                  f"{[str(v.dtype) for v in vals]} (decode every part the same way first)")
            out[k] = torch.cat(vals, dim=0)
        elif isinstance(vals[0], list | tuple):
            out[k] = [x for v in vals for x in v]
        else:
            out[k] = vals[0]
    return out


def rows(batch: Mapping[str, Any], keys: Sequence[str], sl: slice) -> dict[str, Any]:
    """Rows ``sl`` of the ``keys`` present in ``batch`` (the loss's required and optional keys, so the
    ``*_is_pad`` masks and custom ``pad_key``s travel with the values)."""
    return {k: batch[k][sl] for k in keys if k in batch}
