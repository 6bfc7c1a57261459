"""The BC co-training mixture: BC rows drawn from the target and the source datasets with a chosen share.

LeRobot 0.6 cannot mix datasets with weights (``MultiLeRobotDataset`` is disabled; lerobot #912, #1576), so
``--ot.bc_source_weight=W`` builds the mixture here:

* :class:`MixtureDataset` concatenates the target and the source datasets' rows. Every item carries the key
  :data:`PART_KEY` (0 = target, k >= 1 = source k) and its camera frames as its dataset decodes them; its batches
  are collated by :func:`~otplug.lerobot.datasets.collate_rows` (:attr:`MixtureDataset.collate`), and the
  training loop's per-batch uint8 -> float step makes every camera float32 in [0, 1].
* :class:`WeightedFrameSampler` draws rows with replacement: first a dataset ("part") with probability ``q_p``,
  then a frame uniformly among that part's valid frames (episode-aware: the last ``drop_n_last_frames`` of every
  episode are never drawn, as lerobot's ``EpisodeAwareSampler`` does). With ``normalize=True`` (default, the
  seed's ``normalize_bc_weights_by_ds_size``) ``q = (1 - W, W * w_1 / sum(w), ...)``: a per-frame weight
  ``q_p / N_p``, so W is the expected share of source rows whatever the dataset sizes. With ``normalize=False``
  every frame of part p weighs ``q_p`` (ot-sim2real's weighted dataset mixture): part p is drawn with probability
  ``q_p N_p / sum_r q_r N_r``.
* Draws are a pure function of ``(seed, epoch)``; ``state_dict`` / ``load_state_dict`` have the shape of
  lerobot's sampler, so ``compute_sampler_state`` resumes a run sample-exactly.

The training loop pops :data:`PART_KEY` from each BC batch and reports the realised share of source rows in each
log window as the metric ``bc_source_fraction`` (with several sources also ``bc_source_fraction/<name>`` each).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data

from otplug.errors import OtplugError
from otplug.lerobot.datasets import collate_rows, dataset_label, episode_rows

__all__ = ["PART_KEY", "MixtureDataset", "WeightedFrameSampler", "mixture_probabilities", "source_fraction",
           "source_fractions"]

#: the item / batch key naming the dataset a BC row came from (0 = target)
PART_KEY = "otplug.bc_part"


class MixtureDataset(torch.utils.data.Dataset):
    """Rows of ``parts[0]`` (the target), then of ``parts[1]``, ... (sources, already renamed to the target's
    feature names). Items are the parts' own item dicts plus :data:`PART_KEY`; every part must provide the
    target's keys."""

    def __init__(self, parts: Sequence[Any]) -> None:
        if not parts:
            raise OtplugError("MixtureDataset needs at least the target dataset")
        self.parts = list(parts)
        self.sizes = [len(p) for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.camera_keys = list(parts[0].meta.camera_keys)
        target_keys = set(parts[0].meta.features)
        for k, p in enumerate(self.parts[1:], start=1):
            missing = sorted(target_keys - set(p.meta.features))
            if missing:
                raise OtplugError(
                    f"source dataset {dataset_label(p)} lacks the target's feature(s) {missing} needed for BC rows "
                    f"(it has {sorted(p.meta.features)}); map its names with --ot.source_rename_map")
        # the item keys of the target (time windows add *_is_pad keys); every source item must carry them
        self._keys = set(self.parts[0][0])
        for p in self.parts[1:]:
            missing = sorted(self._keys - set(p[0]))
            if missing:
                raise OtplugError(f"source dataset {dataset_label(p)} items lack {missing} that target items carry; "
                                  "map its names with --ot.source_rename_map")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(part, row in that part)`` of a mixture index."""
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return part, int(index - self.offsets[part])

    def __getitem__(self, index: int) -> dict:
        part, row = self.locate(int(index))
        # source-only extras would break collation: every row carries exactly the target's keys
        item = {k: v for k, v in self.parts[part][row].items() if k in self._keys}
        item[PART_KEY] = torch.tensor(part, dtype=torch.int64)
        return item

    def collate(self, collate: Any = None) -> Any:
        """The DataLoader's ``collate_fn`` for this mixture: :func:`collate_rows` over ``collate`` (torch's
        default when None); rows of parts that store a camera differently meet in one batch."""
        return functools.partial(collate_rows, camera_keys=tuple(self.camera_keys), collate=collate)


def _valid_rows(ds: Any, drop_n_last_frames: int) -> np.ndarray:
    """Row positions of ``ds`` that may be drawn: every episode's frames but its last ``drop_n_last_frames``."""
    keep = [rows[: max(0, len(rows) - drop_n_last_frames)] for rows in episode_rows(ds).values()]
    out = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    if not len(out):
        raise OtplugError(f"dataset {dataset_label(ds)} has no frame left after dropping the last "
                          f"{drop_n_last_frames} frames of every episode")
    return np.sort(out)


def mixture_probabilities(sizes: Sequence[int], source_weight: float, source_weights: Sequence[float],
                          normalize: bool = True) -> np.ndarray:
    """Probability of drawing each part (target first). See the module docstring for the law."""
    if not 0.0 <= source_weight <= 1.0:
        raise OtplugError(f"--ot.bc_source_weight must be in [0, 1], got {source_weight}")
    w = np.asarray(source_weights, dtype=np.float64)
    if len(w) != len(sizes) - 1 or (w < 0).any() or (len(w) and w.sum() <= 0):
        raise OtplugError(f"source weights must be >= 0 with a positive sum, one per source; got {list(w)}")
    q = np.concatenate([[1.0 - source_weight], source_weight * w / w.sum()]) if len(w) else np.ones(1)
    if not normalize:
        q = q * np.asarray(sizes, dtype=np.float64)
    if q.sum() <= 0:
        raise OtplugError("the BC mixture gives every dataset zero weight")
    return q / q.sum()


class WeightedFrameSampler(torch.utils.data.Sampler):
    """Mixture indices drawn with replacement by part, then uniformly among the part's valid frames.

    ``len()`` is the number of valid frames of all parts (one "epoch"); each epoch's draws are a pure function of
    ``(seed, epoch)``. ``state_dict`` / ``load_state_dict`` / ``set_epoch`` behave like lerobot's
    ``EpisodeAwareSampler`` (``__iter__`` advances the epoch).
    """

    def __init__(self, mixture: MixtureDataset, probabilities: Sequence[float], *, drop_n_last_frames: int = 0,
                 seed: int = 0) -> None:
        self.mixture = mixture
        self.probabilities = torch.as_tensor(np.asarray(probabilities, dtype=np.float64))
        self._valid = [torch.as_tensor(_valid_rows(p, drop_n_last_frames) + int(mixture.offsets[k]))
                       for k, p in enumerate(mixture.parts)]
        self._len = int(sum(len(v) for v in self._valid))
        self.seed = int(seed)
        self._epoch = 0
        self._start_index = 0

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "start_index": self._start_index}

    def load_state_dict(self, state: dict) -> None:
        self._epoch, self._start_index = int(state["epoch"]), int(state["start_index"])

    def draws(self, epoch: int) -> torch.Tensor:
        """The mixture indices of one epoch."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7_919 + 17) & 0x7FFF_FFFF_FFFF_FFFF)
        parts = torch.multinomial(self.probabilities, self._len, replacement=True, generator=gen)
        u = torch.rand(self._len, generator=gen, dtype=torch.float64)
        out = torch.empty(self._len, dtype=torch.int64)
        for k, valid in enumerate(self._valid):
            sel = parts == k
            out[sel] = valid[(u[sel] * len(valid)).long().clamp_max(len(valid) - 1)]
        return out

    def __iter__(self) -> Iterator[int]:
        draws = self.draws(self._epoch)
        start, self._start_index = self._start_index, 0
        self._epoch += 1
        yield from draws[start:].tolist()


def source_fraction(batch: dict) -> float | None:
    """Pop :data:`PART_KEY` from a BC batch; the share of its rows drawn from a source dataset (None without it)."""
    return source_fractions(batch).get("bc_source_fraction")


def source_fractions(batch: dict, names: Sequence[str] = ()) -> dict[str, float]:
    """Pop :data:`PART_KEY` from a BC batch: ``{"bc_source_fraction": share of source rows}`` plus, with several
    sources (``names``, in part order), ``bc_source_fraction/<name>`` per source; ``{}`` without the key."""
    part = batch.pop(PART_KEY, None)
    if part is None:
        return {}
    out = {"bc_source_fraction": float((part > 0).double().mean())}
    if len(names) > 1:
        for k, name in enumerate(names, start=1):
            out[f"bc_source_fraction/{name}"] = float((part == k).double().mean())
    return out
