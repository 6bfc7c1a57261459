"""``otplug check-config FILE`` with data: the OT config, pair_info files and sources files against the datasets,
before anything is trained.

* ``--dataset T [--source S] [--source-rename-map JSON]``: keys, cameras, shapes and fps
  (:func:`otplug.lerobot.features_check.check_against_datasets`, ``meta/info.json`` only).
* ``--pair-info FILE``: the file's structure; with ``--dataset`` and ``--source`` also its episodes and frames
  against both datasets, as training reads it (:func:`otplug.lerobot.pair_info.load_pair_info`).
* ``--sources-file FILE`` (with ``--dataset``): every source of the file as the two options above, with its own
  rename map and pair_info.

Every problem raises one :class:`~otplug.errors.OtplugError`; on success the lines to print are returned.
"""

from __future__ import annotations

import json
from typing import Any

from otplug.errors import OtplugError

__all__ = ["check_data"]


def _rename_map(text: str | None) -> dict[str, str]:
    try:
        rename = json.loads(text) if text else {}
    except ValueError as exc:
        raise OtplugError(f"--source-rename-map is not a JSON object: {exc}") from None
    if not isinstance(rename, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items()):
        raise OtplugError("--source-rename-map must be a JSON object of source name -> target name")
    return rename


def _keys(cfg: Any, path: str, dataset: str, source: str | None, rename: dict[str, str], who: str = "") -> None:
    from otplug.lerobot.features_check import check_against_datasets

    problems = check_against_datasets(cfg, dataset, source, rename)
    if problems:
        raise OtplugError(f"{path} does not fit the datasets{who}: " + "; ".join(problems))


def _pairs(path: str, dataset: str | None, source: str | None, who: str = "") -> str:
    from otplug.lerobot.pair_info import PairInfoError, load_pair_info

    if dataset is None:
        info = load_pair_info(path)
        where = "structure only: add --dataset and --source to check episodes and frames"
    else:
        from otplug.lerobot.datasets import open_dataset

        try:
            info = load_pair_info(path, source=open_dataset(source), target=open_dataset(dataset))
        except PairInfoError as exc:
            raise PairInfoError(f"{path}{who}: {exc}") from None
        where = f"against {dataset} and {source}"
    entries = sum(len(v) for v in info.values())
    return f"{path}: OK ({where}): {len(info)} target episodes, {entries} source entries"


def check_data(cfg: Any, path: str, *, dataset: str | None, source: str | None, rename_map: str | None,
               pair_info: str | None, sources_file: str | None, target_pool: str | None = None) -> list[str]:
    """Check what the options name; the lines to print on success (the config's own line is the caller's)."""
    if target_pool is not None:
        if dataset is None:
            raise OtplugError("--target-pool needs --dataset (the target dataset whose observations the pool must have)")
        pool_lines = check_pool(cfg, path, dataset, target_pool)
        rest = check_data(cfg, path, dataset=dataset, source=source, rename_map=rename_map, pair_info=pair_info,
                          sources_file=sources_file)
        return rest + pool_lines
    if source is not None and dataset is None:
        raise OtplugError("--source needs --dataset (the target dataset the config is checked against)")
    if sources_file is not None:
        clash = [f for f, v in (("--source", source), ("--source-rename-map", rename_map), ("--pair-info", pair_info))
                 if v is not None]
        if clash:
            raise OtplugError(f"--sources-file lists the sources with their rename maps and pair_info: drop {clash}")
        if dataset is None:
            raise OtplugError("--sources-file needs --dataset (the target dataset the sources pair with)")
        return _sources(cfg, path, dataset, sources_file)
    lines = []
    if pair_info is not None:
        if (dataset is None) != (source is None):
            raise OtplugError("--pair-info is checked against both datasets (--dataset TARGET --source SOURCE) "
                              "or against neither")
        lines.append(_pairs(pair_info, dataset, source))
    if dataset is not None:
        _keys(cfg, path, dataset, source, _rename_map(rename_map))
    return lines


def check_pool(cfg: Any, path: str, dataset: str, pool_file: str) -> list[str]:
    """``--target-pool FILE`` (with ``--dataset``): every pool dataset of the file has the target's observations
    (the policy's inputs; ``action`` may be missing) under the rename map, every key the terms read on the target
    side, and a compatible fps; its pair_info (``pairing = "dtw"``) is read."""
    import otplug
    from otplug.lerobot.features_check import read_features
    from otplug.lerobot.pool import missing_pool_keys, read_pool_file, target_keys_by_term

    loss = otplug.OTLoss(cfg)
    tgt_feats, tgt_fps = read_features(dataset, "--dataset")
    lines = []
    for spec in read_pool_file(pool_file):
        who = f"target pool dataset {spec.name!r} of {pool_file}"
        if spec.root is None:
            lines.append(f"{who}: not checked (no root: a hub repo_id is not read here)")
            continue
        raw, fps = read_features(spec.root, "--target-pool")
        unknown = sorted(k for k in spec.rename_map if k not in raw)
        if unknown:
            raise OtplugError(f"{who}: rename_map names {unknown}, not features of {spec.root}")
        feats = {spec.rename_map.get(k, k): v for k, v in raw.items()}
        lacking = sorted(k for k in tgt_feats if k.startswith("observation.") and k not in feats)
        if lacking:
            raise OtplugError(f"{who} lacks the target's feature(s) {lacking} (the policy reads them); its features: "
                              f"{', '.join(sorted(feats))}")
        why = missing_pool_keys(target_keys_by_term(loss), [feats], [spec])
        if why is not None:
            raise OtplugError(f"{path}: {why}")
        if tgt_fps and fps and fps % tgt_fps:
            raise OtplugError(f"{who} runs at {fps} fps and the target at {tgt_fps}: training reads it at the target's "
                              "time offsets, whole frames only when its fps is a multiple of the target's")
        if spec.pair_info is not None:
            lines.append(_pairs(spec.pair_info, None, None, f" ({who})"))
        actions = "with" if "action" in feats else "without"
        lines.append(f"{who} ({spec.root}, weight {spec.weight:g}, pairing {spec.pairing}, {actions} actions): OK")
    return lines


def _sources(cfg: Any, path: str, dataset: str, sources_file: str) -> list[str]:
    from otplug.lerobot.sources import read_sources_file

    lines = []
    for spec in read_sources_file(sources_file):
        who = f" (source {spec.name!r} of {sources_file})"
        if spec.root is None:
            lines.append(f"source {spec.name!r}: not checked (no root: a hub repo_id is not read here)")
            continue
        _keys(cfg, path, dataset, spec.root, dict(spec.rename_map), who)
        if spec.pair_info is not None:
            lines.append(_pairs(spec.pair_info, dataset, spec.root, who))
        lines.append(f"source {spec.name!r} ({spec.root}, weight {spec.weight:g}): OK")
    return lines
