"""``otplug check-config FILE --dataset ROOT [--source ROOT]``: an OT config against the datasets' features.

Reads only each dataset's ``meta/info.json`` (no lerobot import, no video decoding): every key a term reads on
the target side must be a target feature, every source-side key a source feature (after
``--source-rename-map``), image terms must name camera features, and shapes of paired keys must agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otplug.config.files import read_json_file
from otplug.errors import OtplugError
from otplug.lerobot.datasets import base_key

__all__ = ["check_against_datasets", "read_features"]

CAMERA_DTYPES = ("image", "video")


def read_features(root: str | Path, flag: str) -> tuple[dict[str, Any], int | None]:
    """``(features, fps)`` of the LeRobot dataset at ``root`` (its ``meta/info.json``)."""
    info_path = Path(root).expanduser() / "meta" / "info.json"
    if not info_path.is_file():
        raise OtplugError(f"{flag} {root}: not a LeRobot dataset (no meta/info.json)")
    info = read_json_file(info_path, what="dataset info")
    feats = info.get("features") if isinstance(info, Mapping) else None
    if not isinstance(feats, Mapping):
        raise OtplugError(f"{info_path}: no 'features' table")
    return dict(feats), info.get("fps")


def check_against_datasets(cfg: Any, target_root: str | Path, source_root: str | Path | None = None,
                           rename_map: Mapping[str, str] | None = None) -> list[str]:
    """Problems (one line each; empty = fine) and, on success, nothing. ``rename_map``: source name -> target
    name, as ``--ot.source_rename_map``."""
    import otplug

    loss = otplug.OTLoss(cfg)
    tgt_feats, tgt_fps = read_features(target_root, "--dataset")
    sides: dict[str, dict[str, Any]] = {"tgt": tgt_feats}
    labels = {"tgt": f"the target dataset {target_root}", "src": f"the source dataset {source_root}"}
    problems: list[str] = []
    if source_root is not None:
        src_raw, src_fps = read_features(source_root, "--source")
        rename = dict(rename_map or {})
        unknown = sorted(k for k in rename if k not in src_raw)
        if unknown:
            problems.append(f"--source-rename-map: {unknown} not a feature of {labels['src']}")
        sides["src"] = {rename.get(k, k): v for k, v in src_raw.items()}
        if tgt_fps and src_fps and src_fps % tgt_fps:
            problems.append(f"the source runs at {src_fps} fps and the target at {tgt_fps}: training reads the source "
                            "at the target's time offsets, which are whole source frames only when the source fps is a "
                            "multiple of the target's")
    for side, feats in sides.items():
        for key in sorted(loss.required_keys(side)):
            if base_key(key) not in feats:
                near = sorted(k for k in feats if k.split(".")[:2] == key.split(".")[:2])
                hint = f" (it has {', '.join(near)})" if near else ""
                problems.append(f"terms read {key!r} on the {'target' if side == 'tgt' else 'source'} side but "
                                f"{labels[side]} has no such feature{hint}")
    for spec in cfg.terms:
        if spec.type != "image":
            continue
        for side, feats in sides.items():
            key = spec.options.src_key if side == "src" else getattr(spec.options, "target_key", spec.options.src_key)
            dtype = feats.get(key, {}).get("dtype")
            if dtype is not None and dtype not in CAMERA_DTYPES:
                problems.append(f"term {spec.name!r} (image) reads {key!r}, a {dtype} feature of {labels[side]}, "
                                "not a camera")
    if "src" in sides:
        for key in sorted(loss.required_keys("src") & loss.required_keys("tgt")):
            src_ft, tgt_ft = sides["src"].get(base_key(key), {}), sides["tgt"].get(base_key(key), {})
            a, b = src_ft.get("shape"), tgt_ft.get("shape")
            cameras = tgt_ft.get("dtype") in CAMERA_DTYPES  # image sizes may differ (the encoder pools them)
            if a is not None and b is not None and list(a) != list(b) and not cameras:
                problems.append(f"{key!r} has shape {list(a)} in the source but {list(b)} in the target")
    return problems
