"""Reading one feature from a batch, strictly.

Keys are matched exactly: ``observation.images.front`` never resolves to another camera (the earlier
implementation took any key starting with ``observation.images``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from otplug.errors import BatchError

__all__ = ["has_time_axis", "is_image_key", "pad_mask", "read_value", "slice_last"]

IMAGE_PREFIX = "observation.image"


def is_image_key(key: str) -> bool:
    return key.startswith(IMAGE_PREFIX)


def has_time_axis(key: str, x: torch.Tensor) -> bool:
    """lerobot adds a time axis after the batch axis when ``delta_timestamps`` asks for several steps:
    images are (B,C,H,W) or (B,S,C,H,W); other features (B,D) or (B,S,D)."""
    if is_image_key(key):
        return x.ndim >= 5
    return x.ndim >= 3


def read_value(batch: Mapping[str, torch.Tensor], key: str, side: str) -> torch.Tensor:
    """``batch[key]`` as a floating tensor with a batch axis; clear errors for anything else."""
    if key not in batch:
        available = ", ".join(sorted(k for k in batch if isinstance(k, str))) or "none"
        raise BatchError(f"{side} batch has no key {key!r} (available keys: {available})")
    x = batch[key]
    if not isinstance(x, torch.Tensor):
        raise BatchError(f"{side} batch[{key!r}] must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise BatchError(f"{side} batch[{key!r}] needs a non-empty batch axis, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        raise BatchError(
            f"{side} batch[{key!r}] is uint8 (raw pixels): convert images to float in [0, 1] and run the "
            "policy's preprocessor on OT batches exactly as on BC batches"
        )
    if not torch.is_floating_point(x):
        x = x.float()
    if not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise BatchError(f"{side} batch[{key!r}] has {bad} non-finite value(s) (shape {tuple(x.shape)})")
    return x


def slice_last(x: torch.Tensor, dim_slice: tuple[int, int] | None, key: str, side: str) -> torch.Tensor:
    if dim_slice is None:
        return x
    start, stop = dim_slice
    if x.ndim < 2 or stop > x.shape[-1]:
        raise BatchError(
            f"dim_slice [{start}, {stop}) does not fit {side} batch[{key!r}] with shape {tuple(x.shape)} "
            f"(last axis has {x.shape[-1] if x.ndim >= 2 else 'no'} entries)"
        )
    return x[..., start:stop]


def pad_mask(batch: Mapping[str, torch.Tensor], key: str, x: torch.Tensor, side: str,
             pad_key: str | None = None, required: bool = False) -> torch.Tensor | None:
    """The (B, S) *valid-step* mask from ``<key>_is_pad`` (True = padded), or None when absent."""
    pad_key = pad_key or f"{key}_is_pad"
    if pad_key not in batch:
        if required:
            raise BatchError(f"{side} batch has no {pad_key!r} for {key!r}")
        return None
    pad = batch[pad_key]
    if not isinstance(pad, torch.Tensor) or tuple(pad.shape) != tuple(x.shape[:2]):
        shape = tuple(pad.shape) if isinstance(pad, torch.Tensor) else type(pad).__name__
        raise BatchError(
            f"{side} batch[{pad_key!r}] must have shape (B, S) = {tuple(x.shape[:2])} to mask {key!r}, got {shape}"
        )
    return ~pad.to(device=x.device, dtype=torch.bool)
