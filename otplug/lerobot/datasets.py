"""Opening LeRobot datasets and reading their episode structure (a leaf: imports nothing else of otplug.lerobot).

* :func:`open_dataset` — a local dataset, read-only, never a download attempt; one error naming the dataset.
* :func:`episode_rows`, :func:`episode_lengths`, :func:`episode_arrays` — the one reader of ``episode_index``:
  which rows (``ds[row]`` positions) belong to which episode, in frame order.
* :func:`dataset_label` — how every message names a dataset.
* :func:`images_to_float` — lerobot-train's uint8 -> float step, per batch; :func:`collate_rows` — items of
  datasets with different storage into one batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from otplug.errors import OtplugError

__all__ = [
    "PAD_SUFFIX",
    "DatasetError",
    "RenamedDataset",
    "check_rename_map",
    "collate_rows",
    "dataset_label",
    "episode_arrays",
    "episode_lengths",
    "episode_rows",
    "base_key",
    "images_to_float",
    "no_progress_bars",
    "open_dataset",
    "quiet_lerobot",
]


#: lerobot's mask of padded time steps of a key: ``<key>_is_pad``
PAD_SUFFIX = "_is_pad"


def base_key(key: str) -> str:
    """The feature a ``<key>_is_pad`` mask belongs to (``key`` itself otherwise)."""
    return key[: -len(PAD_SUFFIX)] if key.endswith(PAD_SUFFIX) else key


def images_to_float(batch: dict[str, Any], camera_keys: Any) -> dict[str, Any]:
    """lerobot-train's uint8 -> float32 [0, 1] step for camera values (in place, like lerobot), once per batch as
    lerobot-train does it: video frames decode to uint8, PNG frames to float already. Items are never converted;
    the training loop converts each BC batch, the OT side each pair batch (and :func:`collate_rows` the uint8 rows
    of a camera whose rows cannot be stacked otherwise)."""
    import torch

    for key in camera_keys:
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
            batch[key] = value.to(dtype=torch.float32) / 255.0
    return batch


def collate_rows(items: list[dict[str, Any]], camera_keys: Any, collate: Any = None) -> dict[str, Any]:
    """Collate the items of datasets that may store frames differently (the BC mixture, the pairs of several
    sources) with ``collate`` (torch's ``default_collate`` when None), camera values as they were decoded: the
    uint8 -> float step is the batch's, later (:func:`images_to_float`).

    The one exception: a camera whose rows come as uint8 from one dataset (video) and as float from another (PNG)
    cannot be stacked as it is. Its uint8 rows are stacked together and go through :func:`images_to_float` as one
    batch, so that camera is float for every row (the values the later step would give them)."""
    import torch
    from torch.utils.data import default_collate

    collate = default_collate if collate is None else collate
    mixed = []
    for key in camera_keys:
        dtypes = {it[key].dtype for it in items if isinstance(it.get(key), torch.Tensor)}
        if len(dtypes) > 1 and torch.uint8 in dtypes:
            mixed.append(key)
    if not mixed:
        return collate(items)
    batch = collate([{k: v for k, v in it.items() if k not in mixed} for it in items])
    stacked = {}
    for key in mixed:
        u8 = [i for i, it in enumerate(items) if it[key].dtype == torch.uint8]
        other = [i for i, it in enumerate(items) if it[key].dtype != torch.uint8]
        as_float = images_to_float({key: torch.stack([items[i][key] for i in u8])}, [key])[key]
        rest = torch.stack([items[i][key] for i in other])
        out = torch.empty((len(items), *rest.shape[1:]), dtype=torch.promote_types(rest.dtype, as_float.dtype))
        out[u8], out[other] = as_float, rest
        stacked[key] = out
    ordered = {k: stacked[k] if k in stacked else batch[k] for k in items[0] if k in stacked or k in batch}
    ordered.update((k, v) for k, v in batch.items() if k not in ordered)
    return ordered


class DatasetError(OtplugError, ValueError):
    """A dataset could not be opened, or lacks what was asked of it."""


def quiet_lerobot() -> None:
    """Silence lerobot's one-off torchcodec warning (it falls back to pyav, which we use anyway)."""
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Hide the ``datasets`` library's progress bars while writing small datasets."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def dataset_label(ds: Any) -> str:
    """``repo_id (root)`` of a dataset, for messages."""
    return f"{getattr(ds, 'repo_id', '?')} ({getattr(ds, 'root', '?')})"


def open_dataset(repo_id: str, root: str | Path | None = None, **kwargs: Any):
    """Open a local LeRobot dataset read-only, with a :class:`DatasetError` instead of a download attempt.

    ``repo_id`` may also be a path to a dataset folder (one with ``meta/info.json``); then ``root`` may be
    omitted and the repo id is taken from the folder name. Extra keyword arguments go to ``LeRobotDataset``
    (``video_backend`` defaults to ``"pyav"``: torchcodec needs a system FFmpeg).
    """
    quiet_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if root is None:
        candidate = Path(repo_id).expanduser()
        if (candidate / "meta" / "info.json").is_file():
            root, repo_id = candidate, f"local/{candidate.name}"
    if root is None:
        raise DatasetError(
            f"dataset {repo_id!r}: no local root given (pass the dataset folder; otplug never downloads datasets)"
        )
    root = Path(root).expanduser()
    if not (root / "meta" / "info.json").is_file():
        raise DatasetError(f"dataset {repo_id!r}: {root} is not a LeRobot dataset (no meta/info.json)")
    kwargs.setdefault("video_backend", "pyav")
    try:
        return LeRobotDataset(repo_id, root=root, **kwargs)
    except OtplugError:
        raise
    except Exception as exc:  # lerobot raises a zoo of types; name the dataset
        raise DatasetError(f"dataset {repo_id!r} at {root} could not be opened: {type(exc).__name__}: {exc}") from exc


def _episode_order(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(episode index per row, row order)`` with rows sorted by (episode, frame index)."""
    table = ds.hf_dataset.data  # the arrow table (no torch transform)
    ep = np.asarray(table.column("episode_index").to_numpy(), dtype=np.int64)
    idx = np.asarray(table.column("index").to_numpy(), dtype=np.int64)
    return ep, np.lexsort((idx, ep))


def _split_by_episode(ep_sorted: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    bounds = np.flatnonzero(np.diff(ep_sorted)) + 1
    return {int(e[0]): v for e, v in zip(np.split(ep_sorted, bounds), np.split(values, bounds), strict=True)
            if len(e)}


def episode_rows(ds: Any) -> dict[int, np.ndarray]:
    """``{episode_index: row positions}`` of a LeRobot dataset, in frame order.

    The row positions are what ``ds[row]`` takes (they account for an ``episodes=[...]`` selection);
    ``rows[ep][f]`` is frame ``f`` (relative to the episode) of episode ``ep``.
    """
    ep, order = _episode_order(ds)
    return _split_by_episode(ep[order], order)


def episode_lengths(ds: Any) -> dict[int, int]:
    """``{episode_index: number of frames}``."""
    return {e: len(rows) for e, rows in episode_rows(ds).items()}


def episode_arrays(ds: Any, key: str) -> dict[int, np.ndarray]:
    """``{episode_index: (length, d) float64}`` of the vector feature ``key``, frames in episode order."""
    features = ds.meta.features
    if key not in features:
        vector = sorted(k for k, f in features.items() if f.get("dtype") not in ("image", "video", "string"))
        raise DatasetError(f"dataset {dataset_label(ds)} has no feature {key!r}; vector features: {vector}")
    if features[key].get("dtype") in ("image", "video"):
        raise DatasetError(f"feature {key!r} of dataset {dataset_label(ds)} is an image; a vector feature such as "
                           "observation.state or action is needed here")
    ep, order = _episode_order(ds)
    col = ds.hf_dataset.data.column(key).to_pylist()
    values = np.asarray(col, dtype=np.float64).reshape(len(col), -1)
    return _split_by_episode(ep[order], values[order])


# ---------------------------------------------------------------------------------------------------------------------
# feature-name mapping (--ot.source_rename_map)

def _renamer(rename: dict[str, str]) -> Any:
    def key(k: str) -> str:
        if k in rename:
            return rename[k]
        if k.endswith(PAD_SUFFIX) and base_key(k) in rename:
            return rename[base_key(k)] + PAD_SUFFIX
        return k
    return key


class _RenamedMeta:
    """A dataset's metadata with features, stats and camera keys under the mapped names."""

    def __init__(self, inner: Any, rename: dict[str, str]) -> None:
        self._inner = inner
        key = _renamer(rename)
        self.features = {key(k): v for k, v in inner.features.items()}
        self.stats = {key(k): v for k, v in (inner.stats or {}).items()}
        self.camera_keys = [key(k) for k in inner.camera_keys]
        self.video_keys = [key(k) for k in inner.video_keys]
        self.image_keys = [key(k) for k in inner.image_keys]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RenamedDataset:
    """A LeRobot dataset whose items, features and stats use other names (``rename``: own name -> new name; a
    ``<key>_is_pad`` mask follows its key). Everything else is the wrapped dataset's."""

    def __init__(self, inner: Any, rename: dict[str, str]) -> None:
        self.inner = inner
        self.rename = dict(rename)
        self._key = _renamer(self.rename)
        self.meta = _RenamedMeta(inner.meta, self.rename)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        return {self._key(k): v for k, v in self.inner[index].items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def check_rename_map(rename: dict[str, str], features: Any, label: str, flag: str = "--ot.source_rename_map") -> None:
    """Every mapped name must be a feature of the dataset, and no two names may map to one."""
    unknown = sorted(k for k in rename if k not in features)
    if unknown:
        raise DatasetError(f"{flag}: {unknown} {'is' if len(unknown) == 1 else 'are'} not a feature of {label} "
                           f"(its features: {', '.join(sorted(features))})")
    targets = list(rename.values())
    dup = sorted({t for t in targets if targets.count(t) > 1})
    if dup:
        raise DatasetError(f"{flag}: several names map to {dup}")
