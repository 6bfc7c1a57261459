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

**Decode once per grid**: with ``--ot.frame_cache_dir=DIR`` the decoded rows are also kept in ``DIR`` (one file per
dataset, written atomically) under a fingerprint of everything that fixes them: the dataset's resolved root, repo
id, episodes, time windows and tolerance, video backend and uint8 flag, the name, size and modification time of
every file under the root, and the lerobot, torch and store versions. The next run on the same dataset (a resumed
run, the other cells of a study, another seed) loads them instead of decoding; a changed file or option gives
another fingerprint, so a stale store is never read. A store that cannot be read is decoded again (and said); one
that cannot be written is a warning, never a failed run: the rows are the same either way. Runs that start together
on one dataset (a study's first cells, torchrun ranks) take turns on a lock file beside the store: one decodes, the
others wait and load its rows, instead of each decoding the same rows on its own core.

**Decoded in parallel**: a dataset of :data:`PARALLEL_MIN_ROWS` rows or more is decoded by worker processes (one per
core this process may run on, at most :data:`MAX_DECODE_WORKERS`), each reading a contiguous block of rows through
the same ``__getitem__``; the blocks come back in order, so the rows are those of the serial decode, bit for bit
(tested).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from otplug.atomic import save_file
from otplug.errors import OtplugError
from otplug.lerobot.datasets import RenamedDataset, dataset_label
from otplug.validators import check_option, one_of

__all__ = ["FRAME_CACHE_MODES", "FrameCache", "cache_frames", "estimate_item_bytes", "fingerprint", "maybe_cache",
           "store_path"]

FRAME_CACHE_MODES = ("auto", "memory", "disk")
#: bump when the stored layout changes: older stores get another fingerprint and are never read
STORE_VERSION = 1


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


def fingerprint(ds: Any, *, store: str | Path | None = None) -> str | None:
    """A hash of everything that fixes the rows ``ds[i]`` decode to (see the module docstring), or None for a
    dataset that is not a LeRobotDataset on local disk (no ``root``/``meta``): such a dataset is never stored.
    Files under ``store`` (a store kept inside the dataset's folder) are not part of the dataset."""
    root, meta = getattr(ds, "root", None), getattr(ds, "meta", None)
    if root is None or meta is None:
        return None
    root = Path(root).resolve()
    if not root.is_dir():
        return None
    import lerobot

    skip = Path(store).expanduser().resolve() if store is not None else None
    files = []
    for f in sorted(root.rglob("*")):
        if f.is_file() and not (skip is not None and f.resolve().is_relative_to(skip)):
            st = f.stat()
            files.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    episodes = getattr(ds, "episodes", None)
    described = {
        "store": STORE_VERSION, "root": str(root), "repo_id": getattr(ds, "repo_id", None),
        "episodes": list(episodes) if episodes is not None else None,
        "delta_timestamps": getattr(ds, "delta_timestamps", None), "tolerance_s": getattr(ds, "tolerance_s", None),
        "video_backend": getattr(ds, "_video_backend", None), "return_uint8": getattr(ds, "_return_uint8", None),
        "rows": len(ds), "lerobot": lerobot.__version__, "torch": torch.__version__, "files": files,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def store_path(store: str | Path, ds: Any, key: str) -> Path:
    """The store file of ``ds`` in ``store``: ``<repo id, path-safe>-<fingerprint[:20]>.pt``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(getattr(ds, "repo_id", "dataset"))).strip("._") or "dataset"
    return Path(store).expanduser() / f"{name}-{key[:20]}.pt"


def _pack(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows as one tensor per key (stacked; a key whose shapes differ between rows stays a list), the rest as
    lists: a few large tensors save and load far faster than ``len(items) * keys`` small ones."""
    keys = list(items[0]) if items else []
    columns: dict[str, Any] = {}
    for k in keys:
        values = [it[k] for it in items]
        if all(isinstance(v, torch.Tensor) for v in values) and len({(v.shape, v.dtype) for v in values}) == 1:
            columns[k] = torch.stack(values)
        else:
            columns[k] = values
    return {"store": STORE_VERSION, "rows": len(items), "keys": keys, "columns": columns}


def _unpack(packed: dict[str, Any]) -> list[dict[str, Any]]:
    rows, keys, columns = int(packed["rows"]), list(packed["keys"]), packed["columns"]
    split = {k: list(columns[k].unbind(0)) if isinstance(columns[k], torch.Tensor) else list(columns[k]) for k in keys}
    if any(len(v) != rows for v in split.values()):
        raise ValueError("a column's length differs from the row count")
    return [{k: split[k][i] for k in keys} for i in range(rows)]


def _load_store(path: Path, rows: int) -> list[dict[str, Any]] | None:
    """The rows kept at ``path``; None when there is no file; ``ValueError`` when it cannot be used."""
    if not path.is_file():
        return None
    try:
        packed = torch.load(path, map_location="cpu", weights_only=True)
        items = _unpack(packed)
    except Exception as exc:  # a truncated or foreign file: decode again
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if len(items) != rows:
        raise ValueError(f"it holds {len(items)} rows, the dataset has {rows}")
    return items


#: A dataset with fewer rows is decoded in this process (starting workers costs more than it saves).
PARALLEL_MIN_ROWS = 4096
#: At most this many decode workers.
MAX_DECODE_WORKERS = 8
#: Rows per block a worker decodes and sends back (stacked: a few shared tensors per block, not one per row).
DECODE_BLOCK_ROWS = 512


def decode_workers(rows: int) -> int:
    """How many worker processes decode ``rows`` rows: 0 (this process) below :data:`PARALLEL_MIN_ROWS` or on one
    core, else one per core this process may use (its share under torchrun), at most :data:`MAX_DECODE_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # torchrun: the processes of this machine share its cores
        cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        pass
    if rows < PARALLEL_MIN_ROWS or cores < 2:
        return 0
    return min(cores, MAX_DECODE_WORKERS)


class _Blocks(torch.utils.data.Dataset):
    """Block ``b`` of ``ds``: rows ``b * size ..`` decoded through ``ds[i]`` and packed (:func:`_pack`)."""

    def __init__(self, ds: Any, size: int) -> None:
        self.ds, self.size = ds, size

    def __len__(self) -> int:
        return -(-len(self.ds) // self.size)

    def __getitem__(self, b: int) -> dict[str, Any]:
        start = b * self.size
        return _pack([self.ds[i] for i in range(start, min(start + self.size, len(self.ds)))])


def _as_is(block: dict[str, Any]) -> dict[str, Any]:
    return block


def decode_rows(ds: Any, workers: int) -> list[dict[str, Any]]:
    """``[ds[i] for i in range(len(ds))]``, by ``workers`` worker processes when ``workers > 0`` (blocks of
    :data:`DECODE_BLOCK_ROWS` rows, returned in order through torch's DataLoader). The global RNG is not touched."""
    if workers <= 0:
        return [ds[i] for i in range(len(ds))]
    # its own generator: the workers' base seed is drawn from it, not from the global RNG the training's draws use
    loader = torch.utils.data.DataLoader(_Blocks(ds, DECODE_BLOCK_ROWS), batch_size=None, shuffle=False,
                                         num_workers=workers, collate_fn=_as_is, generator=torch.Generator())
    items: list[dict[str, Any]] = []
    for block in loader:
        items.extend(_unpack(block))
    return items


@contextlib.contextmanager
def _store_lock(path: Path | None, label: str, say: Callable[[str], None] | None) -> Iterator[None]:
    """Hold ``<store file>.lock`` (``flock``: released when the process ends, however it ends) for the block, so
    that of several runs starting on one dataset one decodes and the others load its rows. A lock that cannot be
    taken (no store, a folder that cannot be written, a file system without locks) is skipped: the run decodes."""
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say is not None:
                say(f"frame cache: another run is decoding {label} into {path.parent}; waiting to load its rows")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def cache_frames(ds: Any, *, say: Callable[[str], None] | None = None, store: str | Path | None = None) -> Any:
    """``ds`` with its rows decoded once into memory (a :class:`FrameCache`; a renamed dataset keeps its names on
    top of the cached one). The decode goes through ``ds``'s own ``__getitem__`` with the image transforms off.
    With ``store`` (a folder), rows decoded by an earlier run with the same :func:`fingerprint` are loaded from
    there, and rows decoded here are written there for the next run."""
    if isinstance(ds, RenamedDataset):
        return RenamedDataset(cache_frames(ds.inner, say=say, store=store), ds.rename)
    if isinstance(ds, FrameCache):
        return ds
    label = dataset_label(ds)
    key = fingerprint(ds, store=store) if store is not None else None
    path = store_path(store, ds, key) if key is not None else None
    if store is not None and key is None and say is not None:
        say(f"frame cache: {label} is not a dataset on local disk; decoding it without the store")
    t0 = time.perf_counter()
    with _store_lock(path, label, say), _without_transforms(ds) as transforms:
        items = None
        if path is not None:
            try:
                items = _load_store(path, len(ds))
            except ValueError as exc:
                if say is not None:
                    say(f"frame cache: the store {path} cannot be used ({exc}); decoding again")
        loaded = items is not None
        workers = 0 if loaded else decode_workers(len(ds))
        if items is None:
            items = decode_rows(ds, workers)
        cache = FrameCache(ds, items, transforms)
        if say is not None:
            how = f"loaded from {path}" if loaded else f"decoded{f' by {workers} worker processes' if workers else ''}"
            say(f"frame cache: {len(items)} rows of {label} {how} in {time.perf_counter() - t0:.1f} s "
                f"({cache.nbytes / 2**20:.0f} MiB)")
        if path is not None and not loaded:  # still under the lock: a waiting run finds the whole file
            try:
                packed = _pack(items)
                save_file(path, lambda tmp: torch.save(packed, tmp), "the frame cache store")
            except (OSError, OtplugError) as exc:
                warnings.warn(f"frame cache: could not keep the decoded rows of {label} in {path} ({exc}); the next "
                              "run decodes them again (the training is unaffected)", stacklevel=2)
    return cache


def maybe_cache(ds: Any, mode: str, max_gib: float, *, say: Callable[[str], None] | None = None,
                store: str | Path | None = None) -> Any:
    """Apply ``--ot.frame_cache`` (:data:`FRAME_CACHE_MODES`) to one dataset: the estimate (first row x rows) is
    printed before the decode starts; ``auto`` keeps a dataset above ``max_gib`` on disk and says so. ``store``:
    ``--ot.frame_cache_dir`` (see :func:`cache_frames`)."""
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
        say(f"frame cache: holding {len(ds)} rows of {label} in memory, ~{need * 1024:.0f} MiB "
            "(--ot.frame_cache=disk reads from disk)")
    return cache_frames(ds, say=say, store=store)
