"""What a study's numbers rest on, so that one study's rows are never pooled with another's and a rerun elsewhere
can tell what differed (issue #30).

* the data: the content hashes of the study's datasets (:mod:`otplug.lerobot.content_hash`: the decoded frames and
  values, not the files), recorded in ``data_hashes.json`` when first computed; a study whose data changed since its
  runs were trained is refused;
* the rows: every ``study.json`` row carries its split and scenes, its steps, the data hash and the environment key
  of the run it evaluates (:data:`ROW_RECORD`); :func:`check_one_study` refuses rows of several studies (splits,
  scene ranges, steps, data) with one line naming them;
* the environment: package versions, CPU and its instruction set, GPU, threads (:mod:`otplug.environment`), of the
  process that summarises and, per run, from its ``run_info.json``; runs from several environments (a grid over a
  cluster's nodes) are kept and labelled (:func:`environments`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from otplug.atomic import save_text
from otplug.bench.study_config import StudyError

__all__ = ["DATA_HASHES", "ROW_RECORD", "check_data_hashes", "check_one_study", "environments", "read_json",
           "short_hash"]

DATA_HASHES = "data_hashes.json"
#: what each study.json row records beside its cell and counts: where it ended, and what it rests on
ROW_RECORD = ("ended_other_side", "steps", "data_hash", "environment_key")


def read_json(path: Path) -> Any:
    """A JSON file of the study's own (a stamp, a kept evaluation, a run's summary), or None when it is missing or
    unreadable (a file written over or cut by something else: redone, never a traceback)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def short_hash(hashes: Mapping[str, str]) -> str:
    """One 12-character hash of the study's datasets (``{name: sha256}``)."""
    return hashlib.sha256(json.dumps(dict(hashes), sort_keys=True).encode()).hexdigest()[:12]


def check_data_hashes(out: Path, paths: Mapping[str, Path]) -> dict[str, str]:
    """The content hashes of the study's datasets; the first call records them in ``data_hashes.json``, later ones
    must find the same data (a study whose runs were trained on other data is refused, never pooled)."""
    from otplug.lerobot.content_hash import cached_content_hash

    repo = {"real": f"otplug/study_{Path(paths['real']).name}", "sim": "otplug/study_sim_all",
            "heldout": "otplug/study_real_A_heldout", "pool": "otplug/study_real_play"}
    # the pool only where a study's methods use it (it is recorded for them)
    now = {k: cached_content_hash(repo[k], paths[k]) for k in ("real", "sim", "heldout", "pool") if k in paths}
    kept = read_json(out / DATA_HASHES)
    if isinstance(kept, dict) and kept:
        diff = [k for k in now if kept.get(k) not in (None, now[k])]
        if diff:
            raise StudyError(f"{out}: the study's data changed since its runs were trained ({', '.join(diff)}: content "
                             f"hash {now[diff[0]][:12]}, recorded {str(kept[diff[0]])[:12]} in {out / DATA_HASHES}); "
                             f"use another --output-dir, or remove {out / 'runs'}, {out / 'evals'} and "
                             f"{out / DATA_HASHES} to train again on this data")
    save_text(out / DATA_HASHES, json.dumps(now, indent=2) + "\n")
    return now


def _distinct(rows: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    seen: list[Any] = []
    for r in rows:
        v = r.get(key)
        v = tuple(v) if isinstance(v, list) else v
        if v is not None and v not in seen:
            seen.append(v)
    return seen


def check_one_study(rows: Sequence[Mapping[str, Any]], where: str = "study.json") -> None:
    """Refuse rows of several studies: more than one split, scene range, number of steps or data hash (rows from
    before a field was recorded have none and do not count). One line naming what differs."""
    problems = []
    for key, label in (("split", "splits"), ("scene_seeds", "scene ranges"), ("steps", "training steps"),
                       ("data_hash", "data hashes")):
        values = _distinct(rows, key)
        if len(values) > 1:
            shown = [f"{v[0]}..{v[1] - 1}" if isinstance(v, tuple) and len(v) == 2 else str(v) for v in values]
            counts = [sum(1 for r in rows if (tuple(r[key]) if isinstance(r.get(key), list) else r.get(key)) == v)
                      for v in values]
            problems.append(f"{label} " + ", ".join(f"{s} ({n} rows)" for s, n in zip(shown, counts, strict=True)))
    if problems:
        raise StudyError(f"{where} mixes rows of several studies ({'; '.join(problems)}): statistics need one study's "
                         "rows; summarise each study's folder on its own")


def environments(rows: Sequence[Mapping[str, Any]], out: Path | None = None) -> dict[str, Any]:
    """``environment`` (this process's), ``environment_key`` and ``run_environments`` ({key: number of runs}); with
    runs from several environments, ``environments_note`` says so in one line."""
    from otplug.environment import environment, environment_key

    env = environment()
    runs: dict[str, int] = {}
    for key in {(r.get("method"), r.get("seed")): r.get("environment_key") for r in rows}.values():
        label = key if isinstance(key, str) else "not recorded"
        runs[label] = runs.get(label, 0) + 1
    out_ = {"environment": env, "environment_key": environment_key(env), "run_environments": runs}
    known = [k for k in runs if k != "not recorded"]
    if len(known) > 1:
        out_["environments_note"] = (f"the runs span {len(known)} environments ("
                                     + ", ".join(f"{k}: {runs[k]} runs" for k in known)
                                     + "): library versions or CPU/GPU differ between them (run_info.json of each run "
                                       "says which); a difference between machines does not average out over seeds")
    return out_
