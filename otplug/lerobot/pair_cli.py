"""``otplug pair``: compute DTW ``pair_info`` between source (sim) LeRobot datasets and a target (real) one.

One source: ``--out FILE`` is the pair_info. Several (``--source A --source B``): ``--out DIR`` gets one
``pair_info.<name>.json`` per source and ``sources.json``, the ``--ot.sources_file`` that trains with them all
(weight 1 each; edit the weights there)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from otplug.lerobot.datasets import open_dataset
from otplug.lerobot.dtw import NORMALIZE_CHOICES, compute_pair_info
from otplug.lerobot.pair_info import PairInfoError, save_pair_info, write_json

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otplug pair",
        description="Compute DTW pair_info between the episodes of a source (sim) and a target (real) LeRobot "
                    "dataset. Frame indices in the output are relative to each episode.",
    )
    p.add_argument("--source", required=True, action="append",
                   help="source dataset repo id, or its local folder; repeat for several sources")
    p.add_argument("--source-root", action="append",
                   help="local folder of the source dataset (needed when --source is a repo id); with several "
                        "sources give one per --source, in the same order")
    p.add_argument("--source-name", action="append",
                   help="a name per source for sources.json (default: the folder / repo name)")
    p.add_argument("--target", required=True, help="target dataset repo id, or its local folder")
    p.add_argument("--target-root", help="local folder of the target dataset")
    p.add_argument("--key", default="observation.state", help="vector feature to align (default: %(default)s)")
    p.add_argument("--target-key", help="feature name in the target when it differs from --key")
    p.add_argument("--out", required=True,
                   help="where to write pair_info.json (several sources: a folder for the pair_infos and sources.json)")
    p.add_argument("--window", type=int, help="Sakoe-Chiba band half-width in frames (default: none)")
    p.add_argument("--top-k", type=int, help="keep the K closest source episodes per target episode")
    p.add_argument("--normalize", choices=NORMALIZE_CHOICES, default="episode",
                   help="per-episode standardisation (default), per-dataset, or none")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    sources, roots, names = _sources(args)
    for root in [*roots, args.target_root]:
        if root is not None and not Path(root).expanduser().is_dir():
            flag = "--target-root" if root is args.target_root else "--source-root"
            raise PairInfoError(f"{flag} {root}: no such directory")
    target = open_dataset(args.target, args.target_root)
    several = len(sources) > 1
    out_dir = Path(args.out).expanduser()
    if several and out_dir.exists() and not out_dir.is_dir():
        raise PairInfoError(f"--out {out_dir}: with several sources --out is a folder (for the pair_infos and "
                            "sources.json), and this is a file")
    entries = []
    for repo, root, name in zip(sources, roots, names, strict=True):
        t0 = time.perf_counter()
        source = open_dataset(repo, root)
        info = compute_pair_info(source, target, key=args.key, target_key=args.target_key, normalize=args.normalize,
                                 window=args.window, top_k=args.top_k)
        out = save_pair_info(info, out_dir / f"pair_info.{name}.json" if several else out_dir)
        src_root = root if root is not None else (repo if Path(repo).expanduser().is_dir() else None)
        entries.append({"name": name, "repo_id": repo if root is not None or src_root is None else f"local/{name}",
                        "root": str(Path(src_root).expanduser().resolve()) if src_root else None,
                        "pair_info": str(out.resolve()), "weight": 1.0})
        if not args.quiet:
            n_pairs = sum(len(v) for v in info.values())
            best = [v[0]["raw_dtw_dist"] for v in info.values()]
            print(f"paired {len(info)} target episodes with {source.meta.total_episodes} source episodes"
                  f"{f' of {name!r}' if several else ''} ({n_pairs} pairs, key {args.key!r}, "
                  f"normalize={args.normalize}, window={args.window}, top_k={args.top_k}) in "
                  f"{time.perf_counter() - t0:.2f}s; best distance per target: median {float(np.median(best)):.3f}")
            print(f"wrote {out}")
    if several:
        listing = out_dir / "sources.json"
        write_json(listing, {"sources": [{k: v for k, v in e.items() if v is not None} for e in entries]}, indent=2)
        if not args.quiet:
            print(f"wrote {listing}; train with --ot.sources_file={listing}")
    return 0


def _sources(args: argparse.Namespace) -> tuple[list[str], list[str | None], list[str]]:
    """``(repo ids, roots, names)``, one per ``--source``."""
    sources = list(args.source)
    roots = list(args.source_root or [])
    if len(sources) == 1:
        roots = roots[-1:] or [None]  # one source: the last --source-root wins, as before
    elif roots and len(roots) != len(sources):
        raise PairInfoError(f"{len(sources)} --source but {len(roots)} --source-root; give one root per source "
                            "(or none, passing each source's folder as --source)")
    roots = roots or [None] * len(sources)
    names = list(args.source_name or [])
    if names and len(names) != len(sources):
        raise PairInfoError(f"{len(sources)} --source but {len(names)} --source-name; give one name per source")
    if not names:
        names = [Path(r).name if r else str(s).rstrip("/").rsplit("/", 1)[-1] for s, r in zip(sources, roots, strict=True)]
    bad = [n for n in names if not n or "/" in n or n.startswith(".")]
    if bad:
        raise PairInfoError(f"--source-name {bad[0]!r}: a source name must be a plain file-name part")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PairInfoError(f"two sources are both named {dup[0]!r}; name them with --source-name")
    return sources, roots, names

