"""Batch plumbing of the training step: the uint8 -> float image step, row concatenation, row slices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from otplug.errors import OtplugError
from otplug.lerobot.datasets import images_to_float  # re-exported: the step every batch part goes through

__all__ = ["check_image_range", "concat_batches", "images_to_float", "rows"]


#: tolerance on the [0, 1] range of camera values (image transforms may overshoot by rounding)
IMAGE_RANGE_TOL = 1e-3


def check_image_range(batch: Mapping[str, Any], camera_keys: Sequence[str], what: str = "batch") -> None:
    """Camera values must be float in [0, 1] after the uint8->float step, whatever the dataset's storage: a video
    frame decoded to float 0..255 (or a uint8 frame that skipped the step) fails here, loudly, instead of reaching
    the policy 255x too bright. One host sync for all cameras."""
    keys = [k for k in camera_keys if k in batch and isinstance(batch[k], torch.Tensor) and batch[k].numel()]
    if not keys:
        return
    for k in keys:
        if not batch[k].is_floating_point():
            raise OtplugError(f"camera {k!r} of the {what} is {batch[k].dtype} after the uint8->float step; expected "
                              "float values in [0, 1]")
    bounds = torch.stack([torch.stack(torch.aminmax(batch[k].detach().float())) for k in keys]).cpu().tolist()
    for k, (lo, hi) in zip(keys, bounds, strict=True):
        if lo < -IMAGE_RANGE_TOL or hi > 1 + IMAGE_RANGE_TOL:
            raise OtplugError(f"camera {k!r} of the {what} has values in [{lo:.3g}, {hi:.3g}]; expected [0, 1] after "
                              "the uint8->float step (is a dataset storing frames as float 0..255?)")


def concat_batches(parts: Sequence[Mapping[str, Any]], required: Sequence[str] = (),
                   what: str = "[src, tgt, bc]") -> dict[str, Any]:
    """Row-concatenate collated lerobot batches on their common keys (tensors by ``cat``, lists by ``+``).

    ``what`` names the parts in messages. ``required`` keys must be in every part (named with the part that lacks
    them); tensors must agree in every dimension but the first, and in dtype (a uint8 part beside a float part would
    be promoted silently and skip the image step).
    """
    common = set(parts[0])
    for p in parts[1:]:
        common &= set(p)
    missing = sorted(k for k in required if k not in common)
    if missing:
        sides = [sorted(k for k in missing if k not in p) for p in parts]
        raise OtplugError(f"single-pass layout: key(s) {missing} missing from part of the batch "
                          f"({what} lack {sides}); the source dataset must have the policy's features")
    out: dict[str, Any] = {}
    for k in parts[0]:
        if k not in common:
            continue
        vals = [p[k] for p in parts]
        if isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape[1:]) for v in vals}
            if len(shapes) != 1:
                raise OtplugError(f"{k!r} has different shapes across {what}: "
                                  f"{[tuple(v.shape) for v in vals]}")
            dtypes = {v.dtype for v in vals}
            if len(dtypes) != 1:
                raise OtplugError(f"{k!r} has different dtypes across {what}: "
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
