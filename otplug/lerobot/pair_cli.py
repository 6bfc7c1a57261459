"""``otplug pair``: compute DTW ``pair_info`` between a source (sim) and a target (real) LeRobot dataset."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from otplug.lerobot.datasets import open_dataset
from otplug.lerobot.dtw import NORMALIZE_CHOICES, compute_pair_info
from otplug.lerobot.pair_info import PairInfoError, save_pair_info

__all__ = ["build_parser", "main"]


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
