"""Decode once: a LeRobot dataset's rows held in memory, served exactly as the dataset would serve them.

A training step reads each row through ``LeRobotDataset.__getitem__``: the row's frame, its time windows (an ACT
row with ``chunk_size = 8`` reads 8 action rows, and lerobot's fallback query decodes every column of each, images
included) and, for video keys, an MP4 seek and decode. On small datasets this is most of the data time of a step,
and it is the same work every epoch. :func:`cache_frames` does it once: each row is read through the dataset's own
``__getitem__`` (lerobot's reader and decoders, PNG and video alike) with the image transforms switched off, and
kept; :class:`FrameCache` then serves a copy of the row and applies the transforms itself, per camera and in
lerobot's order, so random augmentations draw from the global RNG exactly as before. The samplers draw the same
indices and every batch is bit for bit the one the disk path gives (``tests/test_frame_cache.py``).

Memory: the rows as lerobot returns them (video frames as uint8 when the training factory asks for uint8, PNG
frames as float32), estimated from the first row and printed before the decode starts. ``--ot.frame_cache``:
``auto`` (default) caches a dataset whose estimate fits ``--ot.frame_cache_max_gib``, ``memory`` caches whatever the
size, ``disk`` reads from disk as lerobot does. Several processes (torchrun) each hold their own copy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from otplug.errors import OtplugError
from otplug.lerobot.datasets import RenamedDataset, dataset_label
from otplug.validators import check_option, one_of

__all__ = ["FRAME_CACHE_MODES", "FrameCache", "cache_frames", "estimate_item_bytes", "maybe_cache"]

FRAME_CACHE_MODES = ("auto", "memory", "disk")


def estimate_item_bytes(item: dict[str, Any]) -> int:
    """Bytes of the tensors of one item (strings and scalars are small beside frames)."""
    return sum(v.element_size() * v.numel() for v in item.values() if isinstance(v, torch.Tensor))


def _base(ds: Any) -> Any:
    return ds.inner if isinstance(ds, RenamedDataset) else ds


class FrameCache:
    """The rows of ``inner`` decoded once (``items[i]`` is ``inner[i]`` without image transforms); ``inner[i]``
    with its transforms is ``self[i]``. Every other attribute (``meta``, ``episodes``, ``hf_dataset``, ...) is the
    wrapped dataset's."""

    def __init__(self, inner: Any, items: list[dict[str, Any]], transforms: Callable | None) -> None:
        self.inner = inner
        self.items = items
        self.transforms = transforms
        meta = inner.meta
        depth = set(getattr(meta, "depth_keys", ()) or ())
        self._transformed = [k for k in meta.camera_keys if k not in depth]

    @property
    def nbytes(self) -> int:
        return sum(estimate_item_bytes(it) for it in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.items[int(index)])  # a new dict: callers may replace values, never the cached tensors
        if self.transforms is not None:
            for cam in self._transformed:
                item[cam] = self.transforms(item[cam])
        return item

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "items", "transforms", "_transformed"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


@contextlib.contextmanager
def _without_transforms(ds: Any) -> Iterator[Callable | None]:
    """``ds`` with its image transforms switched off (lerobot's ``set_image_transforms``) for the block; yields
    them. A dataset that applies transforms it cannot switch off is refused: its cached rows would be frozen
    augmentations."""
    transforms = getattr(ds, "image_transforms", None)
    if transforms is None:
        yield None
        return
    setter = getattr(ds, "set_image_transforms", None)
    if setter is None:
        raise OtplugError(f"dataset {dataset_label(ds)} applies image transforms but cannot switch them off for the "
                          "frame cache; use --ot.frame_cache=disk")
    setter(None)
    try:
        yield transforms
    finally:
        setter(transforms)


def cache_frames(ds: Any, *, say: Callable[[str], None] | None = None) -> Any:
    """``ds`` with its rows decoded once into memory (a :class:`FrameCache`; a renamed dataset keeps its names on
    top of the cached one). The decode goes through ``ds``'s own ``__getitem__`` with the image transforms off."""
    if isinstance(ds, RenamedDataset):
        return RenamedDataset(cache_frames(ds.inner, say=say), ds.rename)
    if isinstance(ds, FrameCache):
        return ds
    t0 = time.perf_counter()
    with _without_transforms(ds) as transforms:
        items = [ds[i] for i in range(len(ds))]
    cache = FrameCache(ds, items, transforms)
    if say is not None:
        say(f"frame cache: {len(items)} rows of {dataset_label(ds)} decoded in {time.perf_counter() - t0:.1f} s "
            f"({cache.nbytes / 2**20:.0f} MiB)")
    return cache


def maybe_cache(ds: Any, mode: str, max_gib: float, *, say: Callable[[str], None] | None = None) -> Any:
    """Apply ``--ot.frame_cache`` (:data:`FRAME_CACHE_MODES`) to one dataset: the estimate (first row x rows) is
    printed before the decode starts; ``auto`` keeps a dataset above ``max_gib`` on disk and says so."""
    if mode not in FRAME_CACHE_MODES:
        check_option("--ot.frame_cache", mode, one_of(*FRAME_CACHE_MODES))
    if mode == "disk" or len(ds) == 0 or isinstance(_base(ds), FrameCache):
        return ds
    base = _base(ds)
    with _without_transforms(base):
        first = base[0]
    need = estimate_item_bytes(first) * len(ds) / 2**30
    label = dataset_label(base)
    if mode == "auto" and need > max_gib:
        if say is not None:
            say(f"frame cache: {label} would take {need:.2f} GiB (> --ot.frame_cache_max_gib={max_gib:g}); reading "
                "it from disk (--ot.frame_cache=memory to cache it anyway)")
        return ds
    if say is not None:
        say(f"frame cache: decoding {len(ds)} rows of {label} once, ~{need * 1024:.0f} MiB in memory "
            "(--ot.frame_cache=disk reads from disk)")
    return cache_frames(ds, say=say)
