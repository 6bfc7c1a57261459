"""Reading one feature from a batch, strictly.

Keys are matched exactly: ``observation.images.front`` never resolves to another camera (the earlier
implementation took any key starting with ``observation.images``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from otplug.errors import BatchError

__all__ = ["check_value", "describe", "has_time_axis", "is_image_key", "pad_mask", "read_value", "slice_last"]

IMAGE_PREFIX = "observation.image"


def is_image_key(key: str) -> bool:
    return key.startswith(IMAGE_PREFIX)


def has_time_axis(key: str, x: torch.Tensor) -> bool:
    """lerobot adds a time axis after the batch axis when ``delta_timestamps`` asks for several steps:
    images are (B,C,H,W) or (B,S,C,H,W); other features (B,D) or (B,S,D)."""
    if is_image_key(key):
        return x.ndim >= 5
    return x.ndim >= 3


#: the floating dtypes terms compute with (float8 and other storage-only formats are refused)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: integer and bool values are accepted and read as float32 (uint8 is refused: raw pixels, see read_value)
INT_DTYPES = (torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
              torch.uint64)


def describe(x: torch.Tensor) -> str:
    """``dtype float32, layout strided, device cpu, shape (4, 3)`` for messages."""
    dtype = str(x.dtype).removeprefix("torch.")
    layout = str(x.layout).removeprefix("torch.")
    try:
        shape = str(tuple(x.shape))
    except RuntimeError:  # a nested tensor has no single shape
        shape = "ragged (nested)"
    return f"dtype {dtype}, layout {layout}, device {x.device}, shape {shape}"


def _batch_error(message: str, key: str, side: str) -> BatchError:
    """A value a term cannot use; ``key`` and ``side`` are attributes, so that the core names the term that read
    it (:func:`otplug.cost.compose_cost`)."""
    exc = BatchError(message)
    exc.key, exc.side = key, side  # type: ignore[attr-defined]
    return exc


def check_value(x: torch.Tensor, key: str, side: str) -> None:
    """The checks every batch tensor a term reads must pass: dense (strided), on a real device (not ``meta``),
    real, floating (float16/bfloat16/float32/float64), integer or bool, and finite. One :class:`BatchError`
    naming the key, its dtype, layout and device otherwise. Non-contiguous strided tensors are fine."""
    where = f"{side} batch[{key!r}] ({describe(x)})"
    if x.layout != torch.strided or x.is_nested:
        kind = "a nested" if x.is_nested else f"a sparse ({str(x.layout).removeprefix('torch.')})"
        raise _batch_error(f"{where} is {kind} tensor; terms read dense tensors: pass x.to_dense()", key, side)
    if x.device.type == "meta":
        raise _batch_error(f"{where} is on the meta device (a shape without values); pass a tensor with data",
                           key, side)
    if x.dtype.is_complex:
        raise _batch_error(f"{where} is complex; terms read real values: pass x.real, x.abs() or the real and "
                           "imaginary parts as separate features (torch.view_as_real)", key, side)
    if x.dtype == torch.uint8:
        raise _batch_error(
            f"{side} batch[{key!r}] is uint8 (raw pixels): convert images to float in [0, 1] and run the "
            "policy's preprocessor on OT batches exactly as on BC batches", key, side)
    if x.dtype not in FLOAT_DTYPES and x.dtype not in INT_DTYPES:
        raise _batch_error(f"{where}: terms read float16/bfloat16/float32/float64, integer or bool values; convert "
                           "it (e.g. x.float())", key, side)
    finite = torch.isfinite(x.detach()) if x.dtype in FLOAT_DTYPES else None
    if finite is not None and not bool(finite.all()):
        bad = int((~finite).sum())
        raise _batch_error(f"{side} batch[{key!r}] has {bad} non-finite value(s) ({describe(x)})", key, side)


def read_value(batch: Mapping[str, torch.Tensor], key: str, side: str) -> torch.Tensor:
    """``batch[key]`` as a floating tensor with a batch axis (integer and bool values as float32), checked by
    :func:`check_value`; clear errors for anything else."""
    if key not in batch:
        available = ", ".join(sorted(k for k in batch if isinstance(k, str))) or "none"
        raise BatchError(f"{side} batch has no key {key!r} (available keys: {available})")
    x = batch[key]
    if not isinstance(x, torch.Tensor):
        raise BatchError(f"{side} batch[{key!r}] must be a torch.Tensor, got {type(x).__name__}")
    check_value(x, key, side)
    if x.ndim < 1 or x.shape[0] == 0:
        raise BatchError(f"{side} batch[{key!r}] needs a non-empty batch axis, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.float()
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
    if pad.layout != torch.strided or pad.is_nested or pad.device.type == "meta" or pad.dtype.is_complex:
        raise _batch_error(f"{side} batch[{pad_key!r}] ({describe(pad)}) must be a dense bool (or 0/1) mask of the "
                           f"padded steps of {key!r}", pad_key, side)
    return ~pad.to(device=x.device, dtype=torch.bool)
