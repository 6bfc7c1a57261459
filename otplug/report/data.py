"""Reading run and study folders for the report: every file optional, every read bounded, nothing fatal but a
folder that is neither a run nor a study."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from otplug.config.files import read_json_file, read_text_file
from otplug.diagnostics import embedding_files
from otplug.errors import OtplugError
from otplug.stats import seed_mean, wilson_interval

__all__ = ["RunFolder", "StudyFolder", "classify", "open_run", "open_study", "series"]

JSON_MAX_BYTES = 16 << 20
METRICS_MAX_BYTES = 1 << 30
PNG_MAX_BYTES = 16 << 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FILES = ("metrics.jsonl", "run_info.json", "train_summary.json")
STUDY_FILES = ("study.json", "study_config.json")
_PLAN = re.compile(r"^plan_(\d+)\.png$")
_SEED = re.compile(r"^seed(\d+)$")


def classify(path: Path) -> str:
    """``"run"`` or ``"study"``; :class:`OtplugError` (one line) for anything else."""
    if not path.exists():
        raise OtplugError(f"no such folder: {path}")
    if not path.is_dir():
        raise OtplugError(f"{path} is not a folder; give a run folder (metrics.jsonl, run_info.json) or a study "
                          "folder (study.json)")
    if any((path / f).is_file() for f in STUDY_FILES):
        return "study"
    if any((path / f).is_file() for f in RUN_FILES):
        return "run"
    raise OtplugError(f"{path} is neither a run folder (metrics.jsonl, run_info.json, train_summary.json) nor a "
                      "study folder (study.json)")


def read_json(path: Path, what: str) -> tuple[Any, str | None]:
    """``(data, None)``, ``(None, None)`` when the file is absent, ``(None, message)`` when it is unreadable."""
    if not path.exists():
        return None, None
    try:
        return read_json_file(path, max_bytes=JSON_MAX_BYTES, what=what), None
    except OtplugError as exc:
        return None, str(exc)


def read_png(path: Path) -> bytes:
    """The bytes of a PNG file (regular file, size-capped, PNG signature checked)."""
    if not path.is_file():
        raise OtplugError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > PNG_MAX_BYTES:
        raise OtplugError(f"{path}: {size} bytes, larger than the {PNG_MAX_BYTES >> 20} MiB shown in a report")
    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        raise OtplugError(f"{path}: not a PNG image")
    return data


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int, str | None]:
    """Rows of ``metrics.jsonl`` (objects with an integer ``step``), the number of lines skipped (a torn last line,
    corrupt lines), and an error when the file cannot be read at all."""
    if not path.exists():
        return [], 0, None
    try:
        text = read_text_file(path, max_bytes=METRICS_MAX_BYTES, what="metrics file")
    except OtplugError as exc:
        return [], 0, str(exc)
    rows, skipped = [], 0
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            skipped += 1
            continue
        rows.append(row)
    rows.sort(key=lambda r: r["step"])
    return rows, skipped, None


def series(rows: list[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric over the rows that have it; ``null`` (non-finite) becomes NaN."""
    steps, values = [], []
    for r in rows:
        if key not in r:
            continue
        v = r[key]
        if v is None:
            v = math.nan
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        steps.append(r["step"])
        values.append(float(v))
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def metric_keys(rows: list[Mapping[str, Any]]) -> list[str]:
    """Every numeric metric name in the rows, in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            numeric = v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            if numeric and k not in ("step", "nonfinite"):
                seen.setdefault(k, None)
    return list(seen)


@attrs.define
class RunFolder:
    path: Path
    run_info: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = attrs.Factory(list)
    skipped_rows: int = 0
    problems: list[str] = attrs.Factory(list)
    plans: list[tuple[int, Path]] = attrs.Factory(list)
    embeddings: list[tuple[int, Path]] = attrs.Factory(list)
    checkpoints: list[str] = attrs.Factory(list)

    @property
    def ot_options(self) -> dict[str, Any]:
        ot = (self.run_info or {}).get("ot")
        return ot if isinstance(ot, dict) else {}

    @property
    def ot_config(self) -> dict[str, Any] | None:
        """The OT config as the run parsed it (``run_info['ot_config']``, the native form); for run folders written
        before that field, the file's text (``run_info['ot_config_text']``) parsed when it is JSON/TOML/YAML."""
        parsed = (self.run_info or {}).get("ot_config")
        if isinstance(parsed, dict):
            return parsed
        text = (self.run_info or {}).get("ot_config_text")
        if not isinstance(text, str):
            return None
        from otplug.config.files import parse_text

        for fmt in ("json", "toml", "yaml"):
            try:
                data = parse_text(text, fmt)
            except OtplugError:  # not this format: try the next
                data = None
            if isinstance(data, dict):
                return data
        return None

    @property
    def ot_enabled(self) -> bool:
        return bool(self.ot_options.get("enabled")) or any("ot_loss" in r for r in self.rows)

    def keys(self) -> list[str]:
        return metric_keys(self.rows)

    def pair_info_path(self) -> Path | None:
        """The pair_info file named in run_info (absolute, or relative to the working folder or the run)."""
        raw = self.ot_options.get("pair_info")
        if not isinstance(raw, str) or not raw:
            return None
        p = Path(raw).expanduser()
        if p.is_absolute() or p.exists():
            return p
        return self.path / p


def _read_parts(folder: Any, parts: tuple[tuple[str, str, str, type], ...]) -> None:
    """Read each ``(file name, attribute, what, JSON type)`` of ``folder.path`` into ``folder.<attribute>``; a
    missing file leaves the attribute unset, an unreadable or wrongly typed one is a line in ``folder.problems``."""
    for name, attr, what, kind in parts:
        data, err = read_json(folder.path / name, what)
        if err:
            folder.problems.append(err)
        elif data is not None and not isinstance(data, kind):
            folder.problems.append(f"{folder.path / name}: expected a JSON {'object' if kind is dict else 'list'}, "
                                   f"got {type(data).__name__}")
        else:
            setattr(folder, attr, data)


def open_run(path: Path) -> RunFolder:
    run = RunFolder(path=path)
    _read_parts(run, (("run_info.json", "run_info", "run info", dict),
                      ("train_summary.json", "summary", "training summary", dict)))
    run.rows, run.skipped_rows, err = read_metrics(path / "metrics.jsonl")
    if err:
        run.problems.append(err)
    plans_dir = path / "plans"
    if plans_dir.is_dir():
        run.plans = sorted((int(m.group(1)), p) for p in plans_dir.iterdir() if (m := _PLAN.match(p.name)))
    run.embeddings = embedding_files(path)
    ck = path / "checkpoints"
    if ck.is_dir():
        run.checkpoints = sorted((p.name for p in ck.iterdir() if p.is_dir() or p.is_symlink()),
                                 key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    return run


@attrs.define
class StudyFolder:
    path: Path
    config: dict[str, Any] | None = None
    table: list[dict[str, Any]] | None = None
    summary: dict[str, Any] | None = None
    markdown: str | None = None
    problems: list[str] = attrs.Factory(list)
    runs: list[tuple[str, int, Path]] = attrs.Factory(list)  # (method, seed, run folder)
    embedding_pictures: list[tuple[str, Path]] = attrs.Factory(list)

    @property
    def seed_level(self) -> bool:
        """Whether study_summary.json is the seed-level summary (SPEC §8.1): cells with a ``mean`` over seeds."""
        cells = (self.summary or {}).get("cells")
        return isinstance(cells, list) and any(isinstance(c, dict) and "mean" in c for c in cells)

    def _entries(self, key: str) -> list[dict[str, Any]]:
        """The objects in one list of the seed-level summary (empty for an older summary); a malformed list or entry
        is a line in ``problems``, once."""
        if not self.seed_level:
            return []
        data = self.summary.get(key) if self.summary else None
        if data is None:
            return []
        note = f"{self.path / 'study_summary.json'}: "
        if not isinstance(data, list):
            self._problem(note + f"'{key}' is not a list ({type(data).__name__}); not shown")
            return []
        good = [e for e in data if isinstance(e, dict)]
        if len(good) < len(data):
            self._problem(note + f"{len(data) - len(good)} of the {len(data)} entries of '{key}' are not objects; "
                          "skipped")
        return good

    def _problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def comparisons(self) -> list[dict[str, Any]]:
        return self._entries("comparisons")

    def gaps(self) -> list[dict[str, Any]]:
        return self._entries("gaps")

    def gap_closed(self) -> list[dict[str, Any]]:
        return self._entries("gap_closed")

    def signals(self) -> list[dict[str, Any]]:
        return self._entries("signals")

    def ends(self) -> list[dict[str, Any]]:
        return self._entries("ends")

    def offline(self) -> list[dict[str, Any]]:
        return self._entries("offline")

    def _rows(self) -> list[dict[str, Any]]:
        """study.json rows with a method, domain, region, integer seed and counts (others noted and skipped)."""
        good, bad = [], 0
        for r in self.table or []:
            ok = isinstance(r, dict) and {"method", "domain", "region", "seed", "successes", "episodes"} <= set(r)
            if ok:
                try:
                    r = {**r, "seed": int(r["seed"]), "successes": int(r["successes"]),
                         "episodes": int(r["episodes"])}
                except (TypeError, ValueError):
                    ok = False
            if ok and 0 <= r["successes"] <= r["episodes"] and r["episodes"] > 0:
                good.append(r)
            else:
                bad += 1
        if bad:
            self._problem(f"{self.path / 'study.json'}: {bad} row(s) without a method, domain, region, seed and "
                          "valid counts; skipped")
        return good

    def design(self) -> dict[str, Any]:
        """The split, the evaluation scenes ``[first, stop)`` and the training seeds: the summary's record, else what
        study.json's rows and study_config.json say (``None`` where nothing does)."""
        summ, cfg, rows = self.summary or {}, self.config or {}, self._rows()
        splits = sorted({str(r["split"]) for r in rows if r.get("split") is not None})
        scenes = sorted({tuple(r["scene_seeds"]) for r in rows if isinstance(r.get("scene_seeds"), list)
                         and len(r["scene_seeds"]) == 2})
        seeds = summ.get("training_seeds")
        if not isinstance(seeds, list):
            seeds = sorted({r["seed"] for r in rows}) or None
        sc = summ.get("scene_seeds")
        return {"split": summ.get("split") or (splits[0] if len(splits) == 1 else None) or cfg.get("split"),
                "splits_in_rows": splits,
                "scene_seeds": list(sc) if isinstance(sc, list) and len(sc) == 2 else
                (list(scenes[0]) if len(scenes) == 1 else None),
                "scene_ranges_in_rows": [list(s) for s in scenes],
                "training_seeds": seeds,
                "n_seeds": len(seeds) if seeds else cfg.get("seeds") if isinstance(cfg.get("seeds"), int) else None}

    def cells(self) -> list[dict[str, Any]]:
        """Per method x domain x region at the level of the training seed: ``mean`` over seeds of the success rate
        with its t interval (``ci95``, None for one seed), ``per_seed`` ({seed: rate}) and the pooled Wilson interval
        as ``episode_noise_wilson95``. The seed-level study_summary.json's cells; for an older summary or none, the
        rows of study.json pooled per seed (:func:`otplug.stats.seed_mean`); else an older summary's cells."""
        if self.seed_level:
            return [c for c in self._entries("cells") if isinstance(c.get("method"), str)]
        rows = self._rows()
        if rows:
            groups: dict[tuple, dict[int, list[int]]] = {}
            for r in rows:
                per = groups.setdefault((r["method"], r["domain"], r["region"]), {})
                s, n = per.get(r["seed"], [0, 0])
                per[r["seed"]] = [s + r["successes"], n + r["episodes"]]
            return [_cell(m, d, reg, {str(k): v for k, v in sorted(per.items())})
                    for (m, d, reg), per in groups.items()]
        out = []
        for c in (self.summary or {}).get("cells") or []:  # an older summary without study.json: its per-seed list
            rates = c.get("per_seed") if isinstance(c, dict) else None
            if not isinstance(rates, list) or not rates or not all(_num(x) for x in rates):
                continue
            cell = _cell(c.get("method"), c.get("domain"), c.get("region"), None, [float(x) for x in rates])
            cell.update(episodes=c.get("episodes"), successes=c.get("successes"),
                        episode_noise_wilson95=c.get("ci95"), pooled_rate=c.get("success_rate"))
            out.append(cell)
        return out

    def cells_source(self) -> str:
        if self.seed_level:
            return "study_summary.json"
        if self._rows():
            return "study.json"
        return "study_summary.json (older format)" if self.cells() else ""


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _cell(method: Any, domain: Any, region: Any, counts: dict[str, list[int]] | None,
          rates: list[float] | None = None) -> dict[str, Any]:
    """A seed-level cell from per-seed ``[successes, episodes]`` (or bare per-seed rates): every number from
    :mod:`otplug.stats`."""
    if counts is not None:
        per = {k: s / n for k, (s, n) in counts.items()}
        s, n = sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values())
        extra = {"episodes": n, "successes": s, "episode_noise_wilson95": list(wilson_interval(s, n)),
                 "pooled_rate": s / n}
    else:
        per = {f"#{i + 1}": r for i, r in enumerate(rates or [])}
        extra = {}
    sm = seed_mean(list(per.values()))
    return {"method": method, "domain": domain, "region": region, "seeds": sm.n, "mean": sm.mean, "sd": sm.sd,
            "ci95": list(sm.ci95) if sm.ci95 else None, "per_seed": per, **extra}


def open_study(path: Path) -> StudyFolder:
    st = StudyFolder(path=path)
    _read_parts(st, (("study_config.json", "config", "study config", dict),
                     ("study.json", "table", "study results", list),
                     ("study_summary.json", "summary", "study summary", dict)))
    if isinstance(st.table, list):
        # rows of several studies never produce a table (one line, exit 2; otplug.bench.study_provenance)
        from otplug.bench.study_provenance import check_one_study

        check_one_study([r for r in st.table if isinstance(r, dict)], where=str(path / "study.json"))
    md = path / "study.md"
    if md.is_file():
        try:
            st.markdown = read_text_file(md, max_bytes=JSON_MAX_BYTES, what="study table")
        except OtplugError as exc:
            st.problems.append(str(exc))
    runs = path / "runs"
    if runs.is_dir():
        for method_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
            for seed_dir in method_dir.iterdir():
                m = _SEED.match(seed_dir.name)
                if m and seed_dir.is_dir():
                    st.runs.append((method_dir.name, int(m.group(1)), seed_dir))
    order = {m: i for i, m in enumerate((st.config or {}).get("methods") or [])}
    st.runs.sort(key=lambda r: (order.get(r[0], len(order)), r[0], r[1]))
    emb = path / "embeddings"
    if emb.is_dir():
        pics = [(p.stem, p) for p in emb.iterdir() if p.suffix == ".png" and p.is_file()]
        st.embedding_pictures = sorted(pics, key=lambda t: (order.get(t[0], len(order)), t[0]))
    return st
