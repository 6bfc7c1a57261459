"""DTW pairing between the episodes of two LeRobot datasets: :func:`compute_pair_info` (``otplug pair``).

The result is a ``pair_info`` mapping (format: :mod:`otplug.lerobot.pair_info`). Entries per target episode are
sorted by ``raw_dtw_dist`` ascending; with ``top_k`` only the k closest source episodes are kept.

``raw_dtw_dist`` is the accumulated cost along the optimal warping path: the sum of Euclidean distances between
matched (normalised) frames, not divided by the path length.

Normalisation before DTW (``normalize``): ``"episode"`` (default) centres every episode on its own mean and scales
each dimension by its own standard deviation, so constant offsets/scales between sim and real do not count;
``"global"`` does the same with each dataset's statistics over all its frames; ``"none"`` uses raw values.

Window (``window``): a Sakoe-Chiba band; target frame i may match source frame j only when
``|i - j| <= max(window, |n - m|)`` for episode lengths n (target) and m (source) — widened by the length
difference so that a path always exists.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from otplug.lerobot.datasets import DatasetError, episode_arrays
from otplug.lerobot.pair_info import PairInfoError

__all__ = ["NORMALIZE_CHOICES", "compute_pair_info", "dtw", "dtw_batch"]

NORMALIZE_CHOICES = ("episode", "global", "none")


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
    try:
        src_eps = _normalise(episode_arrays(source, key), normalize)
        tgt_eps = _normalise(episode_arrays(target, target_key or key), normalize)
    except DatasetError as exc:
        raise PairInfoError(str(exc)) from exc
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

