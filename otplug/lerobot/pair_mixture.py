"""OT pairs from several source datasets (:class:`PairMixture`), each with its own DTW pairing and weight.

Index ``i`` is a target frame that at least one source pairs (target frames are drawn uniformly, as with one
source). Its partner comes from source ``k`` with probability ``w_k / sum_{k' pairing that frame} w_k'``, then
from that source's own distribution over its episodes and frames (:meth:`OTPairDataset.sample_source`, the same
weighting, top-k and window). Draws are a pure function of ``(seed, epoch, i)``, like :class:`OTPairDataset`.

Source items keep the keys every source's items carry (a key only one sim dataset has would break collation);
the target's features are guaranteed by :func:`~otplug.lerobot.pair_dataset.make_source_dataset`. Camera frames
are left as each dataset decodes them: the pair loader collates sources of different storage
(:func:`~otplug.lerobot.datasets.collate_rows`) and the training step puts every pair batch through the same
uint8->float step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otplug.errors import OtplugError
from otplug.lerobot.datasets import episode_rows
from otplug.lerobot.pair_dataset import OTPairDataset, PairDatasetError, PairSampling

__all__ = ["PairMixture", "make_pairs"]


class PairMixture(torch.utils.data.Dataset):
    """``{"src", "tgt"}`` items like :class:`OTPairDataset`, with the source drawn by weight per target frame."""

    def __init__(self, target: Any, sources: Sequence[Any], pair_infos: Sequence[str | Path | Mapping],
                 weights: Sequence[float], sampling: PairSampling | None = None, seed: int = 0,
                 names: Sequence[str] | None = None) -> None:
        if not (len(sources) == len(pair_infos) == len(weights)) or not sources:
            raise PairDatasetError(f"PairMixture needs one pair_info and one weight per source; got {len(sources)} "
                                   f"sources, {len(pair_infos)} pair_infos, {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or (w <= 0).any():
            raise PairDatasetError(f"source weights must be finite and > 0, got {list(weights)}")
        self.names = list(names) if names is not None else [f"source{k}" for k in range(len(sources))]
        self.target = target
        self.weights = w
        self.seed = int(seed)
        self.epoch = 0
        self._tgt_rows = episode_rows(target)
        self.parts = []
        for k, (src, info) in enumerate(zip(sources, pair_infos, strict=True)):
            try:
                self.parts.append(OTPairDataset(target, src, info, sampling, seed=seed))
            except OtplugError as exc:  # a bad pair_info (PairInfoError) or pairing: say which source it is
                raise PairDatasetError(f"source {self.names[k]!r}: {exc}") from exc
        by_frame: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for k, part in enumerate(self.parts):
            for j in range(len(part)):
                by_frame.setdefault(part.target_frame(j), []).append((k, j))
        self._frames = sorted(by_frame)
        self._choices = [by_frame[f] for f in self._frames]
        self._src_keys = self._common_source_keys()

    def _common_source_keys(self) -> set[str] | None:
        if len(self.parts) == 1:
            return None
        keys = [set(p.source[p.source_row(*p.sample_source(0))]) for p in self.parts]
        return set.intersection(*keys)

    def __len__(self) -> int:
        return len(self._frames)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for p in self.parts:
            p.set_epoch(epoch)

    def target_frame(self, i: int) -> tuple[int, int]:
        return self._frames[i]

    def source_probabilities(self, i: int) -> dict[str, float]:
        """``{source name: probability}`` of the partner's source for index ``i``."""
        ks = [k for k, _ in self._choices[i]]
        p = self.weights[ks] / self.weights[ks].sum()
        return {self.names[k]: float(q) for k, q in zip(ks, p, strict=True)}

    def sample(self, i: int) -> tuple[int, int, int]:
        """``(source k, source episode, source frame)`` drawn for index ``i`` (deterministic in seed, epoch, i)."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for PairMixture of length {len(self)}")
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch & 0xFFFFFFFF, int(i), 1])
        choices = self._choices[i]
        p = self.weights[[k for k, _ in choices]]
        k, j = choices[int(rng.choice(len(choices), p=p / p.sum()))]
        ep, f = self.parts[k].sample_source(j, rng)
        return k, ep, f

    def __getitem__(self, i: int) -> dict[str, dict[str, Any]]:
        i = int(i)
        if i < 0:
            i += len(self)
        k, ep, f = self.sample(i)
        part = self.parts[k]
        src = part.source[part.source_row(ep, f)]
        if self._src_keys is not None:
            src = {key: v for key, v in src.items() if key in self._src_keys}
        t_ep, t_f = self._frames[i]
        return {"src": src, "tgt": self.target[int(self._tgt_rows[t_ep][t_f])]}


def make_pairs(target: Any, sources: Sequence[Any], specs: Sequence[Any], sampling: PairSampling,
               seed: int) -> OTPairDataset | PairMixture:
    """The OT pair dataset of a run: :class:`OTPairDataset` for one source (unchanged draws), else a
    :class:`PairMixture` over the sources' pair_infos and weights."""
    if len(sources) == 1:
        return OTPairDataset(target, sources[0], specs[0].pair_info, sampling, seed=seed)
    return PairMixture(target, sources, [s.pair_info for s in specs], [s.weight for s in specs], sampling,
                       seed=seed, names=[s.name for s in specs])
