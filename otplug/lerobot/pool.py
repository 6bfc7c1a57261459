"""The target pool: real frames the OT loss sees and the BC loss never does (``--ot.target_pool=FILE``).

A real robot records frames without demonstrations cheaply -- a camera and proprioception log while it runs any
motion in a part of the workspace that has no real demonstrations. Those frames can enter the alignment (the OT
plan) without entering behaviour cloning: they need no ``action`` feature. A pool file lists the datasets the way a
sources file (:mod:`otplug.lerobot.sources`) does::

    # pool.toml
    [[pool]]
    name = "real_play"                   # optional label (default: the folder name)
    root = "data/real_play"              # relative paths are relative to this file's folder
    weight = 1.0                         # relative weight among the pool datasets (default 1)
    rename_map = { "observation.images.cam" = "observation.images.front" }
    pairing = "none"                     # "none": the plan alone pairs these frames, through the cost
                                         # "dtw": pairs with the source by a pair_info (``otplug pair`` over it)
    # pair_info = "pairs/pair_info.real_play.json"

Every OT batch has ``--ot.batch_size`` target rows: ``round(pool_share * batch_size)`` from the pool, the rest
the DTW-paired real rows. Each pool row comes with a source (sim) row: with ``pairing = "none"`` a source frame
drawn uniformly (sources by their weights), with ``"dtw"`` its DTW partner from the first source. Rows are ordered
``[pairs | pool dtw | pool none]``; the loss gets the number of paired rows (:meth:`otplug.OTLoss.__call__`'s
``paired``): under the diagonal prior the unpaired block is solved with the product prior (docs/math.md §9).

The pool's draws are a pure function of ``(seed, step)`` (:class:`PoolBatches`): a resumed run draws what the
uninterrupted run drew.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from otplug.config.convert import show_value
from otplug.errors import OtplugError
from otplug.lerobot.datasets import collate_rows

__all__ = ["POOL_PAIRINGS", "PoolBatches", "PoolPairs", "PoolSpec", "collate_pool", "make_pool_loader",
           "missing_pool_keys", "open_pool", "pool_rows", "read_pool_file", "target_keys_by_term"]

#: ``pairing`` of a pool dataset
POOL_PAIRINGS = ("none", "dtw")
_KEYS = ("name", "repo_id", "root", "weight", "rename_map", "pairing", "pair_info")
_TAG = 0x9001  # separates the pool's draws from the pair loader's


@attrs.frozen
class PoolSpec:
    """One target-pool dataset: where it is, its weight, its feature-name map and how its rows pair."""

    name: str
    repo_id: str
    root: str | None = None
    weight: float = 1.0
    rename_map: dict[str, str] = attrs.field(factory=dict)
    pairing: str = "none"
    pair_info: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "repo_id": self.repo_id, "root": self.root, "weight": self.weight,
                "rename_map": dict(self.rename_map), "pairing": self.pairing, "pair_info": self.pair_info}


def read_pool_file(path: str | Path) -> list[PoolSpec]:
    """Parse and check a pool file; :class:`ConfigError` lists every problem with its place
    (``pool[0].pairing: ...``). Paths are resolved against the file's folder and must exist."""
    from otplug.lerobot.sources import read_dataset_tables

    return read_dataset_tables(path, "pool", _KEYS, _one_pool, tables="dataset tables ([[pool]])",
                               duplicate="pool dataset; set distinct `name`s")


def _one_pool(entry: dict, at: str, base: Path, problems: list[tuple[str, str]]) -> PoolSpec | None:
    """One ``[[pool]]`` table: a source table's keys (:func:`otplug.lerobot.sources._one`) plus ``pairing``."""
    from otplug.lerobot.sources import _one

    n0 = len(problems)
    pairing = entry.get("pairing", "none")
    if pairing not in POOL_PAIRINGS:
        problems.append((f"{at}.pairing", f"must be one of {', '.join(POOL_PAIRINGS)}, got {show_value(pairing)}"))
    elif pairing == "dtw" and not entry.get("pair_info"):
        problems.append((f"{at}.pair_info", "pairing = 'dtw' needs the pair_info of the pool dataset with the "
                         "source (`otplug pair --target POOL --source SIM --out pair_info.json`)"))
    elif pairing == "none" and entry.get("pair_info"):
        problems.append((f"{at}.pair_info", "is only read with pairing = 'dtw'; drop it or set pairing = 'dtw'"))
    src = _one({k: v for k, v in entry.items() if k != "pairing"}, at, base, problems)
    if src is None or len(problems) > n0:
        return None
    return PoolSpec(name=src.name, repo_id=src.repo_id, root=src.root, weight=src.weight,
                    rename_map=dict(src.rename_map), pairing=pairing, pair_info=src.pair_info)


def open_pool(specs: Sequence[PoolSpec], like: Any) -> list[Any]:
    """Open the pool datasets the way sources are opened (the target's time windows, transforms, video backend
    and feature names, :func:`~otplug.lerobot.pair_dataset.make_source_dataset`), with ``action`` optional: a
    camera + state log without actions is a pool dataset."""
    from otplug.lerobot.pair_dataset import PairDatasetError, make_source_dataset

    out = []
    for spec in specs:
        try:
            out.append(make_source_dataset(spec.repo_id, spec.root, like=like, rename_map=spec.rename_map,
                                           optional=("action",), what=f"target pool dataset {spec.name!r}:"))
        except PairDatasetError:
            raise
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise OtplugError(f"could not open target pool dataset {spec.name!r} {spec.repo_id!r} (root "
                              f"{spec.root}): {exc}") from exc
    return out


def target_keys_by_term(loss: Any) -> dict[str, list[str]]:
    """``{term name: the features its target side reads}`` of an :class:`otplug.OTLoss` (``*_is_pad`` masks as their
    feature): what every pool dataset must have."""
    from otplug.cost import term_keys
    from otplug.lerobot.datasets import base_key

    return {t.name: sorted({base_key(k) for k in term_keys(t, "tgt")}) for t in loss.terms}


def missing_pool_keys(needed: Mapping[str, Sequence[str]], features: Sequence[Any],
                      specs: Sequence[PoolSpec]) -> str | None:
    """The first term key a pool dataset lacks, as one message (``needed``: term name -> the features its target
    side reads, :func:`target_keys_by_term`; ``features``: each pool dataset's feature names, under the target's
    names), or None. Checked before the first step and by ``otplug check-config --target-pool``: a term that needs
    real actions cannot see pool rows."""
    for spec, names in zip(specs, features, strict=True):
        names = set(names)
        for term, keys in needed.items():
            lacking = sorted(k for k in keys if k not in names)
            if lacking:
                return (f"OT term {term!r} reads {lacking} on the target side, which target pool dataset {spec.name!r} "
                        f"({spec.root}) does not have (its features: {', '.join(sorted(names))}); pool rows need terms "
                        "that read no real actions (image, embedding, joint), or drop that dataset")
    return None


def pool_rows(batch_size: int, share: float) -> int:
    """Pool rows of an OT batch of ``batch_size`` target rows at ``share`` (at least one of each kind)."""
    return int(round(share * batch_size))


class PoolBatches(torch.utils.data.Sampler):
    """Batch sampler of the pool: the batch of step ``s`` is ``n`` keys ``(dataset k, row index, s)``, the dataset
    drawn by weight and the row uniformly within it, from ``default_rng([seed, s])`` alone -- so a run resumed at
    step ``s`` draws what the uninterrupted run drew. Infinite; starts at ``start_step``."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], n: int, seed: int, start_step: int = 0) -> None:
        self.sizes = [int(s) for s in sizes]
        w = np.asarray(weights, dtype=np.float64)
        self.p = w / w.sum()
        self.n = int(n)
        self.seed = int(seed)
        self.step = int(start_step)

    def batch(self, step: int) -> list[tuple[int, int, int]]:
        rng = np.random.default_rng([_TAG, self.seed & 0xFFFFFFFF, int(step)])
        ks = rng.choice(len(self.sizes), size=self.n, p=self.p)
        return [(int(k), int(rng.integers(0, self.sizes[k])), int(step)) for k in ks]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        while True:
            yield self.batch(self.step)
            self.step += 1


class PoolPairs(torch.utils.data.Dataset):
    """``{"src": source item, "tgt": pool item, "paired": bool}`` for keys ``(k, i, step)`` of :class:`PoolBatches`.

    ``i`` indexes pool dataset ``k``'s rows (``pairing = "none"``; the source row is drawn uniformly, sources by
    weight) or its DTW-paired frames (``"dtw"``; the source row is drawn from its pairing with the first source,
    as :class:`~otplug.lerobot.pair_dataset.OTPairDataset` draws). Deterministic in ``(seed, step, k, i)``."""

    def __init__(self, pools: Sequence[Any], specs: Sequence[PoolSpec], sources: Sequence[Any],
                 source_weights: Sequence[float], sampling: Any = None, seed: int = 0) -> None:
        from otplug.lerobot.pair_dataset import OTPairDataset, PairDatasetError

        self.pools = list(pools)
        self.specs = list(specs)
        self.sources = list(sources)
        w = np.asarray(source_weights, dtype=np.float64)
        self.source_p = w / w.sum()
        self.seed = int(seed)
        self.pairs: dict[int, Any] = {}
        self.sizes: list[int] = []
        for k, (spec, ds) in enumerate(zip(self.specs, self.pools, strict=True)):
            if spec.pairing == "dtw":
                try:
                    self.pairs[k] = OTPairDataset(ds, self.sources[0], spec.pair_info, sampling, seed=seed)
                except OtplugError as exc:
                    raise PairDatasetError(f"target pool dataset {spec.name!r}: {exc}") from exc
                self.sizes.append(len(self.pairs[k]))
            else:
                self.sizes.append(len(ds))
        self._src_keys = None
        if len(self.sources) > 1:
            self._src_keys = set.intersection(*(set(s[0]) for s in self.sources))

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        k, i, step = (int(x) for x in key)
        rng = np.random.default_rng([_TAG + 1, self.seed & 0xFFFFFFFF, step, k, i])
        if k in self.pairs:
            part = self.pairs[k]
            ep, f = part.sample_source(i, rng)
            src, tgt, paired = self.sources[0][part.source_row(ep, f)], self.pools[k][part.target_row(i)], True
        else:
            s = int(rng.choice(len(self.sources), p=self.source_p))
            src = self.sources[s][int(rng.integers(0, len(self.sources[s])))]
            tgt, paired = self.pools[k][i], False
        if self._src_keys is not None:
            src = {key_: v for key_, v in src.items() if key_ in self._src_keys}
        return {"src": src, "tgt": tgt, "paired": paired}


def collate_pool(items: Sequence[Mapping[str, Any]], camera_keys: Sequence[str] = ()) -> tuple[dict, dict, int]:
    """``(src batch, tgt batch, paired rows)``: the DTW-paired pool rows first, then the unpaired ones."""
    items = sorted(items, key=lambda it: not it["paired"])  # stable: the draw order within each kind
    paired = sum(1 for it in items if it["paired"])
    return (collate_rows([it["src"] for it in items], camera_keys),
            collate_rows([it["tgt"] for it in items], camera_keys), paired)


def make_pool_loader(pool_pairs: PoolPairs, n: int, seed: int, start_step: int, num_workers: int,
                     camera_keys: Sequence[str] = ()) -> torch.utils.data.DataLoader:
    """The pool's loader: ``n`` rows per step from :class:`PoolBatches` (starting at ``start_step``)."""
    sampler = PoolBatches(pool_pairs.sizes, [s.weight for s in pool_pairs.specs], n, seed, start_step)
    # a generator of its own: a DataLoader iterator draws its base seed from it, and from torch's global RNG without
    # one -- which would move the policy's dropout and VAE draws, so that the pool changed the BC loss
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.utils.data.DataLoader(pool_pairs, batch_sampler=sampler, num_workers=num_workers, generator=gen,
                                       collate_fn=functools.partial(collate_pool, camera_keys=tuple(camera_keys)))
