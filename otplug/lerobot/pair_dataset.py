"""The OT pair dataset: a fixed target (real) frame and a DTW-paired source (sim) frame.

Index ``i`` of :class:`OTPairDataset` is one target frame that has a pairing (so a shuffled sampler draws every
paired target frame equally often, however many source frames it is aligned to). For that frame the source side
is drawn as follows (:class:`PairSampling`):

1. **Source episode.** Candidates are the pair_info entries of the target episode (sorted by distance; only the
   ``top_k`` closest when set) whose aligned list for this frame is non-empty. Each candidate with DTW distance
   ``d`` gets the weight

   * ``"logistic"`` (ot-sim2real, default): ``1 / (1 + exp(sharpness * (d - cutoff)))``; ``cutoff`` defaults to
     the median distance of the target episode's entries (after top-k), so episodes closer than the median are
     preferred, and ``sharpness`` (in 1/distance units) sets how strongly;
   * ``"exp"`` (the earlier implementation): ``exp(-sharpness * d)``;
   * ``"uniform"``: equal weights.

   Weights are computed in log space, so large distances never underflow to an all-zero distribution.
2. **Source frame.** A frame drawn uniformly from the aligned list of the target frame in that entry.
3. **Jitter.** A frame drawn uniformly from ``[f - window_size, f + window_size]`` intersected with **that source
   episode** — the window never crosses into a neighbouring episode (the earlier implementation clipped to the
   whole dataset). ``no_window=True`` instead draws a frame uniformly from the whole source episode.

Draws are deterministic in ``(seed, epoch, index)``: data-loader workers and DDP ranks that share the seed agree,
and :meth:`OTPairDataset.set_epoch` gives a fresh draw each epoch.

All frame numbers are relative to their episode (0 = first frame of the episode), as in pair_info.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.utils.data

from otplug import validators as v
from otplug.errors import OtplugError
from otplug.lerobot.datasets import (
    RenamedDataset,
    check_rename_map,
    collate_rows,
    dataset_label,
    episode_rows,
    open_dataset,
)
from otplug.lerobot.pair_info import load_pair_info
from otplug.validators import OptionError, check_option

__all__ = [
    "OTPairDataset",
    "PairDatasetError",
    "PairSampling",
    "collate_pairs",
    "cycle_epochs",
    "make_pair_loader",
    "partner_pairs",
    "make_source_dataset",
]

SAMPLING_MODES = ("logistic", "exp", "uniform")


class PairDatasetError(OtplugError, ValueError):
    """The pair dataset cannot be built (bad sampling options, mismatched datasets, missing features)."""


def _sampling(check: Any, *, optional: bool = False) -> Any:
    """An attrs validator: ``check`` (an :mod:`otplug.validators` check) on ``sampling.<field>``, raised as
    :class:`PairDatasetError` with otplug's usual message (``None`` passes for an optional field)."""
    def run(_inst: Any, attr: Any, value: Any) -> None:
        if optional and value is None:
            return
        try:
            check_option(f"sampling.{attr.name}", value, check)
        except OptionError as exc:
            raise PairDatasetError(str(exc) + (" (or None)" if optional else "")) from None
    return run


@attrs.frozen
class PairSampling:
    """How the source frame paired with a target frame is drawn (see the module docstring).

    * ``mode``: ``"logistic"`` | ``"exp"`` | ``"uniform"`` — the source-episode weight.
    * ``sharpness``: slope of the weight, in 1/distance units (``raw_dtw_dist`` is a sum over the warping path,
      so it grows with episode length; 0 makes every candidate equally likely).
    * ``cutoff``: the logistic midpoint; ``None`` = median distance of the target episode's (top-k) entries.
    * ``top_k``: keep only the k lowest-distance source episodes per target episode.
    * ``window_size``: jitter half-width in frames (0 = the aligned frame itself), clipped to the source episode.
    * ``no_window``: draw the source frame uniformly from the chosen source episode instead.
    """

    mode: str = attrs.field(default="logistic", validator=_sampling(v.one_of(*SAMPLING_MODES)))
    sharpness: float = attrs.field(default=1.0, validator=_sampling(v.non_negative))
    cutoff: float | None = attrs.field(default=None, validator=_sampling(v.finite, optional=True))
    top_k: int | None = attrs.field(default=None, validator=_sampling(v.positive_int, optional=True))
    window_size: int = attrs.field(default=2, validator=_sampling(v.non_negative_int))
    no_window: bool = False

    def log_weights(self, distances: np.ndarray, cutoff: float) -> np.ndarray:
        """Unnormalised log-weights of source episodes with the given DTW distances."""
        d = np.asarray(distances, dtype=np.float64)
        if self.mode == "uniform":
            return np.zeros_like(d)
        if self.mode == "exp":
            # relative to the closest candidate (weights are normalised anyway): -sharpness * d would overflow to
            # -inf for every candidate at huge distances and leave no distribution at all
            return np.maximum(-self.sharpness * (d - d.min()), -1e300) if len(d) else d
        # log(1 / (1 + exp(z))) = -softplus(z), stable for any z; clamped so huge distances keep a finite weight
        return np.maximum(-np.logaddexp(0.0, self.sharpness * (d - cutoff)), -1e300)


@attrs.frozen
class _Entry:
    src_episode: int
    distance: float
    pairing: dict[int, np.ndarray]  # target frame -> aligned source frames


class OTPairDataset(torch.utils.data.Dataset):
    """Pairs of ``{"src": source item, "tgt": target item}`` (lerobot's own item dicts).

    ``len()`` is the number of target frames that have at least one aligned source frame; index ``i`` is
    target frame ``target_frame(i)``. Build the source with :func:`make_source_dataset` so that its time windows
    and image transforms match the target's.
    """

    def __init__(self, target, source, pair_info: str | Path | Mapping, sampling: PairSampling | None = None,
                 seed: int = 0) -> None:
        self.target = target
        self.source = source
        self.sampling = sampling if sampling is not None else PairSampling()
        if not isinstance(self.sampling, PairSampling):
            raise PairDatasetError(f"sampling must be a PairSampling, got {type(self.sampling).__name__}")
        self.seed = int(seed)
        self.epoch = 0
        info = load_pair_info(pair_info, source=source, target=target)
        self._tgt_rows = episode_rows(target)
        self._src_rows = episode_rows(source)
        self._src_len = {e: len(r) for e, r in self._src_rows.items()}

        self._entries: dict[int, list[_Entry]] = {}
        self._cutoff: dict[int, float] = {}
        index: list[tuple[int, int]] = []
        for t_name, raw_entries in info.items():
            t_ep = int(t_name)
            entries = [
                _Entry(int(e["demo_name"]), float(e["raw_dtw_dist"]),
                       {int(f): np.asarray(v, dtype=np.int64) for f, v in e["pairing"].items() if v})
                for e in raw_entries  # sorted by distance by load_pair_info
            ]
            if self.sampling.top_k is not None:
                entries = entries[: self.sampling.top_k]
            self._entries[t_ep] = entries
            dists = [e.distance for e in entries]
            self._cutoff[t_ep] = float(self.sampling.cutoff if self.sampling.cutoff is not None
                                       else np.median(dists))
            frames = sorted(set().union(*(e.pairing.keys() for e in entries)))
            index += [(t_ep, f) for f in frames]
        if not index:
            raise PairDatasetError("pair_info pairs no target frame with any source frame")
        index.sort()
        self._index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self._position = {(int(e), int(f)): i for i, (e, f) in enumerate(self._index)}

    # -- indexing ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh source frames for a new epoch (call it on every worker/rank copy alike)."""
        self.epoch = int(epoch)

    def target_frame(self, i: int) -> tuple[int, int]:
        """``(target episode, frame in episode)`` of index ``i``."""
        ep, f = self._index[i]
        return int(ep), int(f)

    def index_of(self, episode: int, frame: int) -> int:
        """Index of target ``(episode, frame)``; :class:`PairDatasetError` when that frame has no pairing."""
        try:
            return self._position[(int(episode), int(frame))]
        except KeyError:
            raise PairDatasetError(f"target episode {episode} frame {frame} has no pairing in pair_info") from None

    def target_row(self, i: int) -> int:
        ep, f = self.target_frame(i)
        return int(self._tgt_rows[ep][f])

    def source_row(self, episode: int, frame: int) -> int:
        return int(self._src_rows[episode][frame])

    # -- sampling ------------------------------------------------------------------------------------------------

    def _distribution(self, i: int) -> tuple[list[_Entry], np.ndarray]:
        """The candidate entries of index ``i`` and their probabilities (normalised in log space)."""
        t_ep, t_f = self.target_frame(i)
        cands = [e for e in self._entries[t_ep] if t_f in e.pairing]
        logw = self.sampling.log_weights(np.array([e.distance for e in cands]), self._cutoff[t_ep])
        p = np.exp(logw - logw.max())
        return cands, p / p.sum()

    def candidates(self, i: int) -> list[tuple[int, float, float]]:
        """``[(source episode, distance, probability)]`` for index ``i`` (the source-episode distribution)."""
        cands, p = self._distribution(i)
        return [(e.src_episode, e.distance, float(q)) for e, q in zip(cands, p, strict=True)]

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch & 0xFFFFFFFF, int(i)])

    def sample_source(self, i: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """``(source episode, source frame)`` drawn for index ``i`` — deterministic in (seed, epoch, i)."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for OTPairDataset of length {len(self)}")
        rng = rng if rng is not None else self._rng(i)
        _t_ep, t_f = self.target_frame(i)
        cands, p = self._distribution(i)
        entry = cands[int(rng.choice(len(cands), p=p))]
        n = self._src_len[entry.src_episode]
        if self.sampling.no_window:
            return entry.src_episode, int(rng.integers(0, n))
        aligned = entry.pairing[t_f]
        f = int(aligned[rng.integers(0, len(aligned))])
        w = self.sampling.window_size
        lo, hi = max(0, f - w), min(n - 1, f + w)
        return entry.src_episode, int(rng.integers(lo, hi + 1))

    def __getitem__(self, i: int) -> dict[str, dict[str, Any]]:
        i = int(i)
        if i < 0:
            i += len(self)
        s_ep, s_f = self.sample_source(i)
        return {"src": self.source[self.source_row(s_ep, s_f)], "tgt": self.target[self.target_row(i)]}


def collate_pairs(items: Sequence[Mapping[str, Any]], camera_keys: Sequence[str] = ()) -> tuple[dict, dict]:
    """Collate a list of ``{"src", "tgt"}`` items into ``(src_batch, tgt_batch)`` with torch's default collate;
    the ``camera_keys`` of sources with different storage meet as :func:`~otplug.lerobot.datasets.collate_rows`
    says (camera values are otherwise left as decoded: the uint8 -> float step is the batch's)."""
    return (collate_rows([it["src"] for it in items], camera_keys),
            collate_rows([it["tgt"] for it in items], camera_keys))


def make_source_dataset(repo_id: str, root: str | Path | None, *, like, rename_map: Mapping[str, str] | None = None,
                        optional: Sequence[str] = (), what: str = "source dataset", **kwargs):
    """Open a source dataset the way the target was opened, under the target's feature names.

    The source gets the target's ``delta_timestamps`` (in seconds, so a source at another fps is read at the
    target's time offsets; refused when those are not whole source frames), ``image_transforms``, video backend
    and ``return_uint8`` (lerobot's training factory decodes video frames to uint8; PNG frames come as float
    either way and every part goes through one uint8->float step later). Then time windows and ``*_is_pad`` masks
    of source and target items agree (SPEC §5). ``rename_map`` (``{source name: target name}``, lerobot's
    ``rename_map`` shape) is applied when the dataset is opened, so BC rows and OT pairs see the target's names.
    ``like`` is the target :class:`LeRobotDataset`; extra keyword arguments go to ``LeRobotDataset`` (they may not
    override the copied settings). Raises :class:`PairDatasetError` naming the source dataset and the feature
    when something does not match.
    """
    for k in ("delta_timestamps", "image_transforms", "return_uint8"):
        if k in kwargs:
            raise PairDatasetError(f"make_source_dataset copies {k} from the target; do not pass it")
    rename = dict(rename_map or {})
    back = {v: k for k, v in rename.items()}  # target name -> source name
    delta = getattr(like, "delta_timestamps", None)
    transforms = getattr(like, "image_transforms", None)
    kwargs.setdefault("video_backend", getattr(like, "_video_backend", None) or "pyav")
    kwargs.setdefault("tolerance_s", getattr(like, "tolerance_s", 1e-4))
    kwargs.setdefault("return_uint8", bool(getattr(like, "_return_uint8", False)))
    probe = open_dataset(repo_id, root, **kwargs)
    try:
        check_rename_map(rename, probe.meta.features, f"the {what} {dataset_label(probe)}")
    except OtplugError as exc:
        raise PairDatasetError(str(exc)) from exc
    # the policy's inputs and outputs are the target's observation.* and action features: the source needs them all
    target_features = getattr(getattr(like, "meta", None), "features", {}) or {}
    # ``optional`` target features (a target pool's ``action``) may be absent: then they are not read at all
    absent = {k for k in optional if back.get(k, k) not in probe.meta.features}
    needed = sorted(({k for k in target_features if k.startswith("observation.") or k == "action"}
                     | set(delta or {})) - absent)
    missing = [k for k in needed if back.get(k, k) not in probe.meta.features]
    if missing:
        raise PairDatasetError(
            f"{what} {dataset_label(probe)} lacks the target's feature(s) {missing} (the policy reads them); "
            f"its features: {sorted(probe.meta.features)}" + _rename_hint(missing, probe, like))
    delta = {k: ts for k, ts in delta.items() if k not in absent} if delta else delta
    src_delta = {back.get(k, k): v for k, v in delta.items()} if delta else None
    if src_delta:
        if probe.fps != like.fps:
            bad = [k for k, ts in delta.items() if any(abs(t * probe.fps - round(t * probe.fps)) > 1e-3 for t in ts)]
            if bad:
                raise PairDatasetError(
                    f"{what} {dataset_label(probe)} runs at {probe.fps} fps but the target at {like.fps}; the "
                    f"target's time offsets for {bad} are not whole source frames (record or convert the source at "
                    f"{like.fps} fps or a multiple of it)")
    if src_delta or transforms is not None:
        try:
            probe = open_dataset(repo_id, root, delta_timestamps=src_delta, image_transforms=transforms, **kwargs)
        except OtplugError as exc:
            raise PairDatasetError(f"{what} with the target's delta_timestamps: {exc}") from exc
    return RenamedDataset(probe, rename) if rename else probe


def _rename_hint(missing: Sequence[str], source: Any, target: Any) -> str:
    """A ``--ot.source_rename_map`` suggestion pairing missing target cameras with unused source cameras."""
    meta = getattr(target, "meta", None)
    if meta is None:
        return " (map names with --ot.source_rename_map)"
    tgt_cams = [k for k in missing if k in meta.camera_keys]
    src_cams = [k for k in source.meta.camera_keys if k not in meta.features]
    if not tgt_cams or len(tgt_cams) != len(src_cams):
        return " (map names with --ot.source_rename_map)"
    pairs = ", ".join(f'"{s}": "{t}"' for s, t in zip(src_cams, tgt_cams, strict=True))
    return f"; map them with --ot.source_rename_map='{{{pairs}}}'"


def partner_pairs(target: Any, source: Any, pair_info: str | Path | Mapping, n: int, *,
                  seed: int = 1) -> tuple[OTPairDataset, list[int], tuple[dict, dict]]:
    """``n`` target frames spread evenly over the paired target frames, each with its DTW partner (the aligned
    frame of the closest source episode, no jitter): ``(pair dataset, indices, (src batch, tgt batch))``. The
    fixed probe set of the demo report, the study's embedding pictures and the training diagnostics."""
    ds = OTPairDataset(target, source, pair_info, PairSampling(top_k=1, window_size=0), seed=seed)
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long().tolist()
    return ds, idx, collate_pairs([ds[i] for i in idx], list(target.meta.camera_keys))


class EpochSampler(torch.utils.data.Sampler):
    """The draws of torch's ``RandomSampler(generator=...)`` (per epoch one ``randperm`` for the order and the
    empty tail ``randperm`` it draws at the epoch's end), with the first epoch starting ``skip`` indices in: the pair
    loader resumed at step ``s`` continues the order the uninterrupted run had (:func:`fast_forward`)."""

    def __init__(self, n: int, generator: torch.Generator, skip: int = 0) -> None:
        self.n = int(n)
        self.generator = generator
        self.skip = int(skip)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        yield from torch.randperm(self.n, generator=self.generator).tolist()[skip:]
        torch.randperm(self.n, generator=self.generator)  # RandomSampler's tail draw (num_samples % n == 0)


def make_pair_loader(pair_dataset: OTPairDataset, batch_size: int, num_workers: int, generator: torch.Generator,
                     camera_keys: Sequence[str] = ()) -> torch.utils.data.DataLoader:
    """The OT pair loader (``camera_keys``: the cameras :func:`collate_pairs` looks after). Its workers are never
    persistent: a persistent worker keeps its copy of the dataset from epoch 0, so :meth:`OTPairDataset.set_epoch`
    would not reach it and every epoch would repeat epoch 0's source draws. New workers per OT epoch see the
    current epoch."""
    return torch.utils.data.DataLoader(pair_dataset, batch_size=batch_size, sampler=EpochSampler(
                                           len(pair_dataset), generator), generator=generator,
                                       drop_last=True, num_workers=num_workers, persistent_workers=False,
                                       collate_fn=functools.partial(collate_pairs, camera_keys=tuple(camera_keys)))


def fast_forward(loader: torch.utils.data.DataLoader, steps: int) -> int:
    """Advance a fresh :func:`make_pair_loader` loader by ``steps`` batches without loading any: replay the
    generator draws of the finished epochs (the loader's base seed, the order, the tail draw) and start the next
    epoch that many batches in. Returns the epoch to continue with (for :func:`cycle_epochs`)."""
    per_epoch = len(loader)
    if steps <= 0 or per_epoch == 0:
        return 0
    epoch, within = divmod(int(steps), per_epoch)
    gen, n = loader.generator, len(loader.sampler)
    for _ in range(epoch):
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the iterator's base seed
        torch.randperm(n, generator=gen)
        torch.randperm(n, generator=gen)
    loader.sampler.skip = within * loader.batch_size
    return epoch


def cycle_epochs(pair_dataset: OTPairDataset, loader: Any, start_epoch: int = 0) -> Iterator[Any]:
    """Batches of ``loader`` forever, with ``pair_dataset.set_epoch(e)`` before epoch ``e``."""
    epoch = start_epoch
    while True:
        pair_dataset.set_epoch(epoch)
        yield from loader
        epoch += 1
