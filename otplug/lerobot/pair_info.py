"""The ``pair_info`` format: DTW pairings between target (real) and source (sim) episodes, read and written.

The JSON format of ot-sim2real (SPEC §5)::

    {"<tgt_episode>": [{"demo_name": "<src_episode>", "raw_dtw_dist": float,
                        "pairing": {"<tgt_frame>": [src_frame, ...]}}, ...]}

* Episode names are the datasets' ``episode_index`` values written as integer strings (``"0"``, ``"1"``, ...).
  :func:`load_pair_info` also accepts a word prefix (``"demo_3"``, ``"episode-3"``, ``"ep3"``): the trailing integer
  is the episode index. Anything else (``"3.0"`` from a pandas round trip, ``"-1"``, ``"3a"``) is an error.
* Frame indices are **relative to the episode** (0 = the episode's first frame), for the target frame (the key)
  and the source frames (the list) alike.
* ``raw_dtw_dist`` is a finite distance >= 0; a target episode appears once, and a source episode at most once
  per target episode.

:func:`compute_pair_info` (:mod:`otplug.lerobot.dtw`) writes this format; :func:`load_pair_info` validates a
file or mapping (against the datasets when given) and returns it in canonical form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from otplug.atomic import disk_full, write_error
from otplug.atomic import write_text_atomic
from otplug.config.files import PAIR_INFO_MAX_BYTES, read_json_file
from otplug.errors import OtplugError
from otplug.lerobot.datasets import dataset_label, episode_lengths

__all__ = ["PairInfoError", "load_pair_info", "save_pair_info"]

#: pair_info files larger than this are refused before reading (a DTW of 1000 x 1000 episodes of 100 frames is
#: far below it).
MAX_PAIR_INFO_BYTES = PAIR_INFO_MAX_BYTES


class PairInfoError(OtplugError, ValueError):
    """pair_info is malformed, or cannot be computed from the given datasets."""


def save_pair_info(pair_info: Mapping, path: str | Path) -> Path:
    """Write ``pair_info`` as JSON, atomically (a temporary sibling renamed into place; nothing is left behind
    when writing fails)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PairInfoError(f"--out {path} is a directory; give a file name such as {path / 'pair_info.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PairInfoError(f"cannot create the folder of {path}: {exc.strerror or exc}") from exc
    return write_json(path, pair_info)


def write_json(path: Path, data: Any, indent: int | None = None) -> Path:
    """``data`` as JSON at ``path``, atomically; :class:`PairInfoError` naming the file when it cannot be written."""
    text = json.dumps(data, indent=indent) + ("\n" if indent else "")
    try:
        return write_text_atomic(path, text)
    except OSError as exc:
        if disk_full(exc):
            raise write_error(path, exc, "pair_info") from exc
        raise PairInfoError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------------------------------------------
# validation

_EP_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z_-]*?[_-]?)?(\d+)$")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _episode_index(name: Any, where: str) -> int:
    if isinstance(name, int) and not isinstance(name, bool) and name >= 0:
        return name
    m = _EP_NAME.match(name) if isinstance(name, str) else None
    if not m:
        hint = ""
        if isinstance(name, str | float):
            try:
                as_float = float(name)
                if as_float.is_integer():
                    hint = f" (write it as {str(int(as_float))!r}; a float-looking name is not read as an index)"
            except (TypeError, ValueError, OverflowError):
                pass
        raise PairInfoError(f"pair_info{where}: episode name {_short(name)} is not an episode index "
                            f"(expected \"<int>\" or a word prefix + int like \"demo_3\"){hint}")
    return int(m.group(1))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PairInfoError(f"pair_info: key {_short(k)} appears twice in one JSON object (a target episode or "
                                "frame listed twice)")
        out[k] = v
    return out


def _read(path: Path) -> Any:
    """The bounded reader of every input file (regular files only, size cap, UTF-8, nesting and integer limits),
    plus duplicate keys refused."""
    if not path.exists():
        raise PairInfoError(f"pair_info file {path} does not exist")
    try:
        return read_json_file(path, max_bytes=MAX_PAIR_INFO_BYTES, what="pair_info file",
                              object_pairs_hook=_no_duplicate_keys)
    except PairInfoError:
        raise
    except OtplugError as exc:
        raise PairInfoError(str(exc)) from exc


def load_pair_info(path_or_dict: str | Path | Mapping, *, source=None, target=None) -> dict[str, list[dict[str, Any]]]:
    """Read (from a JSON file) or take a pair_info mapping, validate it and return it in canonical form.

    Canonical form: episode names are plain integers as strings, frame keys integer strings, frame lists of
    ints, entries sorted by ``raw_dtw_dist``. With ``source`` / ``target`` datasets, episodes must exist there
    and frame indices must lie inside the episodes. Every problem raises :class:`PairInfoError` naming the
    target episode, entry and key at fault.
    """
    if isinstance(path_or_dict, str | Path):
        data = _read(Path(path_or_dict).expanduser())
    else:
        data = path_or_dict
    if not isinstance(data, Mapping):
        raise PairInfoError(f"pair_info must be a JSON object keyed by target episode, got {type(data).__name__}")
    if not data:
        raise PairInfoError("pair_info is empty")
    src_len = episode_lengths(source) if source is not None else None
    tgt_len = episode_lengths(target) if target is not None else None
    out: dict[str, list[dict[str, Any]]] = {}
    for t_name, entries in data.items():
        t_ep = _episode_index(t_name, f"[{t_name!r}]")
        where_t = f"[{t_name!r}]"
        if str(t_ep) in out:
            raise PairInfoError(f"pair_info{where_t}: target episode {t_ep} appears twice")
        if tgt_len is not None and t_ep not in tgt_len:
            raise PairInfoError(f"pair_info{where_t}: target episode {t_ep} is not in the target dataset "
                                f"{dataset_label(target)} (episodes {min(tgt_len)}..{max(tgt_len)})")
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
                                    f"{dataset_label(source)}")
            dist = entry["raw_dtw_dist"]
            if isinstance(dist, bool) or not isinstance(dist, int | float) or not np.isfinite(dist) or dist < 0:
                raise PairInfoError(f"pair_info{where}.raw_dtw_dist: expected a finite number >= 0, got {_short(dist)}")
            if any(c["demo_name"] == str(s_ep) for c in canon):
                raise PairInfoError(f"pair_info{where}.demo_name: source episode {s_ep} is listed twice for target "
                                    f"episode {t_ep}")
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
                    raise PairInfoError(f"pair_info{wf}: expected a list of integer source frames, got {_short(frames)}")
                for x in frames:
                    if x < 0 or (src_len is not None and x >= src_len[s_ep]):
                        limit = f" (episode length {src_len[s_ep]})" if src_len is not None else ""
                        raise PairInfoError(f"pair_info{wf}: source frame {x} is outside source episode {s_ep}{limit}")
                cp[str(f)] = list(frames)
            canon.append({"demo_name": str(s_ep), "raw_dtw_dist": float(dist), "pairing": cp})
        canon.sort(key=lambda e: e["raw_dtw_dist"])
        out[str(t_ep)] = canon
    return out
