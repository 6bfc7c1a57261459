"""DTW pairing between the episodes of two LeRobot datasets (``otplug pair``).

The result, ``pair_info``, is the JSON format of ot-sim2real (SPEC §5)::

    {"<tgt_episode>": [{"demo_name": "<src_episode>", "raw_dtw_dist": float,
                        "pairing": {"<tgt_frame>": [src_frame, ...]}}, ...]}

* Episode names are the datasets' ``episode_index`` values written as strings (``"0"``, ``"1"``, ...).
  :func:`load_pair_info` also accepts names with a prefix (``"demo_3"``, ``"episode_3"``): the trailing integer is
  the episode index.
* Frame indices are **relative to the episode** (0 = the episode's first frame), for the target frame (the key)
  and the source frames (the list) alike. Every target frame of a paired episode appears, with the source frames
  the warping path matches it to, in increasing order.
* Entries per target episode are sorted by ``raw_dtw_dist`` ascending; with ``top_k`` only the k closest source
  episodes are kept.
* ``raw_dtw_dist`` is the accumulated cost along the optimal warping path: the sum of Euclidean distances between
  matched (normalised) frames, not divided by the path length.

Normalisation before DTW (``normalize``): ``"episode"`` (default) centres every episode on its own mean and scales
each dimension by its own standard deviation, so constant offsets/scales between sim and real do not count;
``"global"`` does the same with each dataset's statistics over all its frames; ``"none"`` uses raw values.

Window (``window``): a Sakoe-Chiba band; target frame i may match source frame j only when
``|i - j| <= max(window, |n - m|)`` for episode lengths n (target) and m (source) — widened by the length
difference so that a path always exists.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from otplug.errors import OtplugError

__all__ = [
    "PairInfoError",
    "compute_pair_info",
    "dtw",
    "dtw_batch",
    "episode_arrays",
    "load_pair_info",
    "main",
    "save_pair_info",
]

NORMALIZE_CHOICES = ("episode", "global", "none")


class PairInfoError(OtplugError, ValueError):
    """pair_info is malformed, or cannot be computed from the given datasets."""


# ---------------------------------------------------------------------------------------------------------------------
# DTW


def _cost_matrices(tgt: np.ndarray, srcs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean costs (B, n, M) between tgt (n, d) and each src (m_b, d), padded with +inf to M = max m_b."""
    n = tgt.shape[0]
    lens = np.array([s.shape[0] for s in srcs])
    mmax = int(lens.max())
    padded = np.zeros((len(srcs), mmax, tgt.shape[1]), dtype=np.float64)
    for b, s in enumerate(srcs):
        padded[b, : s.shape[0]] = s
    diff = tgt[None, :, None, :] - padded[:, None, :, :]
    cost = np.sqrt(np.einsum("bnmd,bnmd->bnm", diff, diff))
    cost = np.where(np.arange(mmax)[None, None, :] >= lens[:, None, None], np.inf, cost)
    assert cost.shape == (len(srcs), n, mmax)
    return cost, lens


def dtw_batch(cost: np.ndarray, lens: np.ndarray, window: int | None = None) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """DTW of one target against a batch of sources, vectorised over the batch and the anti-diagonals.

    ``cost``: (B, n, M) local costs (target frame i, source frame j), +inf where j >= lens[b].
    Returns (distances (B,), paths): each path is the list of (i, j) cells from (0, 0) to (n-1, lens[b]-1).
    Steps are (1, 0), (0, 1), (1, 1).
    """
    cost = np.array(cost, dtype=np.float64, copy=True)
    bsz, n, mmax = cost.shape
    if window is not None:
        ii = np.arange(n)[None, :, None]
        jj = np.arange(mmax)[None, None, :]
        band = np.maximum(window, np.abs(n - lens))[:, None, None]
        cost[np.abs(ii - jj) > band] = np.inf
    acc = np.full((bsz, n + 1, mmax + 1), np.inf)
    acc[:, 0, 0] = 0.0
    # move[b, i, j]: 0 = diagonal, 1 = from (i-1, j) (target advances), 2 = from (i, j-1) (source advances)
    move = np.zeros((bsz, n + 1, mmax + 1), dtype=np.int8)
    for k in range(2, n + mmax + 1):  # k = i + j with 1-based i, j
        i = np.arange(max(1, k - mmax), min(n, k - 1) + 1)
        j = k - i
        cand = np.stack([acc[:, i - 1, j - 1], acc[:, i - 1, j], acc[:, i, j - 1]])  # (3, B, L)
        best = np.argmin(cand, axis=0)
        acc[:, i, j] = cost[:, i - 1, j - 1] + np.take_along_axis(cand, best[None], 0)[0]
        move[:, i, j] = best
    dists = acc[np.arange(bsz), n, lens]
    paths = []
    for b in range(bsz):
        i, j = n, int(lens[b])
        path = []
        if np.isfinite(dists[b]):
            while i > 0 and j > 0:
                path.append((i - 1, j - 1))
                mv = move[b, i, j]
                if mv == 0:
                    i, j = i - 1, j - 1
                elif mv == 1:
                    i -= 1
                else:
                    j -= 1
            path.reverse()
        paths.append(path)
    return dists, paths


def dtw(a: np.ndarray, b: np.ndarray, window: int | None = None) -> tuple[float, list[tuple[int, int]]]:
    """DTW between sequences ``a`` (n, d) (or (n,)) and ``b`` (m, d): (accumulated Euclidean cost, path of (i, j))."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    cost, lens = _cost_matrices(a, [b])
    d, paths = dtw_batch(cost, lens, window)
    return float(d[0]), paths[0]


# ---------------------------------------------------------------------------------------------------------------------
# reading episodes


def _dataset_label(ds) -> str:
    return f"{getattr(ds, 'repo_id', '?')} ({getattr(ds, 'root', '?')})"


def episode_arrays(ds, key: str) -> dict[int, np.ndarray]:
    """``{episode_index: (length, d) float64}`` of the vector feature ``key``, frames in episode order."""
    features = ds.meta.features
    if key not in features:
        vector = sorted(k for k, f in features.items() if f.get("dtype") not in ("image", "video", "string"))
        raise PairInfoError(f"dataset {_dataset_label(ds)} has no feature {key!r}; vector features: {vector}")
    if features[key].get("dtype") in ("image", "video"):
        raise PairInfoError(f"feature {key!r} of dataset {_dataset_label(ds)} is an image; DTW pairing needs a vector "
                            "feature such as observation.state or action")
    table = ds.hf_dataset.data  # the arrow table (no torch transform)
    ep = np.asarray(table.column("episode_index").to_numpy(), dtype=np.int64)
    idx = np.asarray(table.column("index").to_numpy(), dtype=np.int64)
    col = table.column(key).to_pylist()
    values = np.asarray(col, dtype=np.float64).reshape(len(col), -1)
    order = np.lexsort((idx, ep))
    ep, values = ep[order], values[order]
    out: dict[int, np.ndarray] = {}
    bounds = np.flatnonzero(np.diff(ep)) + 1
    for chunk_ep, chunk in zip(np.split(ep, bounds), np.split(values, bounds), strict=True):
        if len(chunk_ep):
            out[int(chunk_ep[0])] = chunk
    return out


def _normalise(episodes: dict[int, np.ndarray], mode: str) -> dict[int, np.ndarray]:
    if mode == "none":
        return episodes
    if mode == "global":
        allv = np.concatenate(list(episodes.values()))
        mu, sd = allv.mean(0), allv.std(0)
        sd = np.where(sd > 1e-8, sd, 1.0)
        return {e: (v - mu) / sd for e, v in episodes.items()}
    if mode == "episode":
        out = {}
        for e, v in episodes.items():
            sd = v.std(0)
            out[e] = (v - v.mean(0)) / np.where(sd > 1e-8, sd, 1.0)
        return out
    raise PairInfoError(f"normalize must be one of {list(NORMALIZE_CHOICES)}, got {mode!r}")


def compute_pair_info(
    source,
    target,
    *,
    key: str = "observation.state",
    target_key: str | None = None,
    normalize: str = "episode",
    window: int | None = None,
    top_k: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """DTW-pair every target episode with every source episode on feature ``key``.

    ``source`` / ``target`` are LeRobot datasets (anything with ``meta.features`` and ``hf_dataset``).
    ``target_key`` defaults to ``key`` (use it when the two datasets name the feature differently; the
    dimensions must agree). See the module docstring for the format and the meaning of every option.
    """
    if normalize not in NORMALIZE_CHOICES:
        raise PairInfoError(f"normalize must be one of {list(NORMALIZE_CHOICES)}, got {normalize!r}")
    if window is not None and window < 0:
        raise PairInfoError(f"window must be >= 0, got {window}")
    if top_k is not None and top_k < 1:
        raise PairInfoError(f"top_k must be >= 1, got {top_k}")
    src_eps = _normalise(episode_arrays(source, key), normalize)
    tgt_eps = _normalise(episode_arrays(target, target_key or key), normalize)
    if not src_eps or not tgt_eps:
        raise PairInfoError("both datasets need at least one episode to pair")
    d_src = next(iter(src_eps.values())).shape[1]
    d_tgt = next(iter(tgt_eps.values())).shape[1]
    if d_src != d_tgt:
        raise PairInfoError(f"feature {key!r} has {d_src} dims in the source but "
                            f"{target_key or key!r} has {d_tgt} in the target; DTW needs equal dimensions")
    src_ids = sorted(src_eps)
    src_list = [src_eps[e] for e in src_ids]
    out: dict[str, list[dict[str, Any]]] = {}
    for t_ep in sorted(tgt_eps):
        tgt = tgt_eps[t_ep]
        cost, lens = _cost_matrices(tgt, src_list)
        dists, paths = dtw_batch(cost, lens, window)
        order = np.argsort(dists, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        entries = []
        for b in order:
            pairing: dict[str, list[int]] = {str(i): [] for i in range(tgt.shape[0])}
            for i, j in paths[b]:
                pairing[str(i)].append(int(j))
            entries.append({"demo_name": str(src_ids[b]), "raw_dtw_dist": float(dists[b]), "pairing": pairing})
        out[str(t_ep)] = entries
    return out


def save_pair_info(pair_info: Mapping, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(pair_info))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# validation

_EP_NAME = re.compile(r"^(?:.*?[^0-9])?(\d+)$")


def _episode_index(name: Any, where: str) -> int:
    if isinstance(name, int) and not isinstance(name, bool) and name >= 0:
        return name
    m = _EP_NAME.match(str(name)) if isinstance(name, str) else None
    if not m:
        raise PairInfoError(f"pair_info{where}: episode name {name!r} does not end in an episode index")
    return int(m.group(1))


def _episode_lengths(ds) -> dict[int, int]:
    ep = np.asarray(ds.hf_dataset.data.column("episode_index").to_numpy(), dtype=np.int64)
    uniq, counts = np.unique(ep, return_counts=True)
    return {int(e): int(c) for e, c in zip(uniq, counts, strict=True)}


def load_pair_info(path_or_dict: str | Path | Mapping, *, source=None, target=None) -> dict[str, list[dict[str, Any]]]:
    """Read (from a JSON file) or take a pair_info mapping, validate it and return it in canonical form.

    Canonical form: episode names are plain integers as strings, frame keys integer strings, frame lists of
    ints, entries sorted by ``raw_dtw_dist``. With ``source`` / ``target`` datasets, episodes must exist there
    and frame indices must lie inside the episodes. Every problem raises :class:`PairInfoError` naming the
    target episode, entry and key at fault.
    """
    if isinstance(path_or_dict, (str, Path)):
        p = Path(path_or_dict).expanduser()
        if not p.is_file():
            raise PairInfoError(f"pair_info file {p} does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise PairInfoError(f"pair_info file {p} is not valid JSON: line {exc.lineno}: {exc.msg}") from exc
    else:
        data = path_or_dict
    if not isinstance(data, Mapping):
        raise PairInfoError(f"pair_info must be a JSON object keyed by target episode, got {type(data).__name__}")
    if not data:
        raise PairInfoError("pair_info is empty")
    src_len = _episode_lengths(source) if source is not None else None
    tgt_len = _episode_lengths(target) if target is not None else None
    out: dict[str, list[dict[str, Any]]] = {}
    for t_name, entries in data.items():
        t_ep = _episode_index(t_name, f"[{t_name!r}]")
        where_t = f"[{t_name!r}]"
        if str(t_ep) in out:
            raise PairInfoError(f"pair_info{where_t}: target episode {t_ep} appears twice")
        if tgt_len is not None and t_ep not in tgt_len:
            raise PairInfoError(f"pair_info{where_t}: target episode {t_ep} is not in the target dataset "
                                f"{_dataset_label(target)} (episodes {min(tgt_len)}..{max(tgt_len)})")
        if not isinstance(entries, list) or not entries:
            raise PairInfoError(f"pair_info{where_t}: expected a non-empty list of source entries")
        canon = []
        for k, entry in enumerate(entries):
            where = f"{where_t}[{k}]"
            if not isinstance(entry, Mapping):
                raise PairInfoError(f"pair_info{where}: expected an object, got {type(entry).__name__}")
            missing = {"demo_name", "raw_dtw_dist", "pairing"} - set(entry)
            if missing:
                raise PairInfoError(f"pair_info{where}: missing key(s) {sorted(missing)}")
            s_ep = _episode_index(entry["demo_name"], f"{where}.demo_name")
            if src_len is not None and s_ep not in src_len:
                raise PairInfoError(f"pair_info{where}.demo_name: source episode {s_ep} is not in the source dataset "
                                    f"{_dataset_label(source)}")
            dist = entry["raw_dtw_dist"]
            if isinstance(dist, bool) or not isinstance(dist, (int, float)) or not np.isfinite(dist):
                raise PairInfoError(f"pair_info{where}.raw_dtw_dist: expected a finite number, got {dist!r}")
            pairing = entry["pairing"]
            if not isinstance(pairing, Mapping):
                raise PairInfoError(f"pair_info{where}.pairing: expected an object frame -> [source frames]")
            cp: dict[str, list[int]] = {}
            for f_name, frames in pairing.items():
                wf = f"{where}.pairing[{f_name!r}]"
                try:
                    f = int(f_name)
                except (TypeError, ValueError):
                    raise PairInfoError(f"pair_info{wf}: target frame must be an integer") from None
                if f < 0 or (tgt_len is not None and f >= tgt_len[t_ep]):
                    limit = f" (episode length {tgt_len[t_ep]})" if tgt_len is not None else ""
                    raise PairInfoError(f"pair_info{wf}: target frame {f} is outside target episode {t_ep}{limit}")
                if not isinstance(frames, list) or not all(
                        isinstance(x, int) and not isinstance(x, bool) for x in frames):
                    raise PairInfoError(f"pair_info{wf}: expected a list of integer source frames, got {frames!r}")
                for x in frames:
                    if x < 0 or (src_len is not None and x >= src_len[s_ep]):
                        limit = f" (episode length {src_len[s_ep]})" if src_len is not None else ""
                        raise PairInfoError(f"pair_info{wf}: source frame {x} is outside source episode {s_ep}{limit}")
                cp[str(f)] = list(frames)
            canon.append({"demo_name": str(s_ep), "raw_dtw_dist": float(dist), "pairing": cp})
        canon.sort(key=lambda e: e["raw_dtw_dist"])
        out[str(t_ep)] = canon
    return out


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otplug pair",
        description="Compute DTW pair_info between the episodes of a source (sim) and a target (real) LeRobot "
                    "dataset. Frame indices in the output are relative to each episode.",
    )
    p.add_argument("--source", required=True, help="source dataset repo id, or its local folder")
    p.add_argument("--source-root", help="local folder of the source dataset (needed when --source is a repo id)")
    p.add_argument("--target", required=True, help="target dataset repo id, or its local folder")
    p.add_argument("--target-root", help="local folder of the target dataset")
    p.add_argument("--key", default="observation.state", help="vector feature to align (default: %(default)s)")
    p.add_argument("--target-key", help="feature name in the target when it differs from --key")
    p.add_argument("--out", required=True, help="where to write pair_info.json")
    p.add_argument("--window", type=int, help="Sakoe-Chiba band half-width in frames (default: none)")
    p.add_argument("--top-k", type=int, help="keep the K closest source episodes per target episode")
    p.add_argument("--normalize", choices=NORMALIZE_CHOICES, default="episode",
                   help="per-episode standardisation (default), per-dataset, or none")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from otplug.lerobot.demo_data import open_dataset

    for name, root in (("source", args.source_root), ("target", args.target_root)):
        if root is not None and not Path(root).expanduser().is_dir():
            raise PairInfoError(f"--{name}-root {root}: no such directory")
    t0 = time.perf_counter()
    source = open_dataset(args.source, args.source_root)
    target = open_dataset(args.target, args.target_root)
    info = compute_pair_info(source, target, key=args.key, target_key=args.target_key, normalize=args.normalize,
                             window=args.window, top_k=args.top_k)
    out = save_pair_info(info, args.out)
    if not args.quiet:
        n_pairs = sum(len(v) for v in info.values())
        best = [v[0]["raw_dtw_dist"] for v in info.values()]
        print(f"paired {len(info)} target episodes with {source.meta.total_episodes} source episodes "
              f"({n_pairs} pairs, key {args.key!r}, normalize={args.normalize}, window={args.window}, "
              f"top_k={args.top_k}) in {time.perf_counter() - t0:.2f}s; "
              f"best distance per target: median {float(np.median(best)):.3f}")
        print(f"wrote {out}")
    return 0
