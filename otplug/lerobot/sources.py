"""Which source (sim) datasets a run trains with: one (``--ot.source_repo_id`` / ``--ot.source_root`` /
``--ot.pair_info`` / ``--ot.source_rename_map``) or several (``--ot.sources_file=FILE``).

A sources file (JSON, TOML or YAML, read within the limits of :mod:`otplug.config.files`) lists the sources::

    # sources.toml
    [[sources]]
    name = "sim_flat"                 # optional; a label for logs and run_info.json (default: the folder name)
    repo_id = "me/sim_flat"           # optional when root is given
    root = "data/sim_flat"            # relative paths are relative to this file's folder
    pair_info = "pairs/pair_info.sim_flat.json"   # DTW pairing with the target (needed when OT is on)
    weight = 2.0                      # relative weight (default 1)
    rename_map = { "observation.images.cam_high" = "observation.images.top" }

    [[sources]]
    root = "data/sim_textured"
    pair_info = "pairs/pair_info.sim_textured.json"

``otplug pair --target REAL --source SIM_A --source SIM_B --out DIR`` writes such a file (``DIR/sources.json``).
Weights act twice: in the BC mixture the source share ``--ot.bc_source_weight`` is split among the sources in
proportion to their weights, and in the OT batch a target frame's partner comes from source k with probability
``w_k / sum(w)`` over the sources that pair that frame (:class:`otplug.lerobot.pair_mixture.PairMixture`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from otplug.config.convert import show_value, suggest_key
from otplug.errors import ConfigError, OtplugError
from otplug.validators import FieldValueError, rename_map

__all__ = ["SourceSpec", "check_specs", "read_dataset_tables", "read_sources_file", "single_source"]

_KEYS = ("name", "repo_id", "root", "pair_info", "weight", "rename_map")


@attrs.frozen
class SourceSpec:
    """One source dataset: where it is, how it pairs with the target, its weight and its feature-name map."""

    name: str
    repo_id: str
    root: str | None = None
    pair_info: str | None = None
    weight: float = 1.0
    rename_map: dict[str, str] = attrs.field(factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "repo_id": self.repo_id, "root": self.root, "pair_info": self.pair_info,
                "weight": self.weight, "rename_map": dict(self.rename_map)}


def single_source(repo_id: str | None, root: str | None, pair_info: str | None,
                  rename_map: Mapping[str, str] | None) -> SourceSpec:
    """The spec of the ``--ot.source_*`` options (one source, weight 1)."""
    return SourceSpec(name="source", repo_id=repo_id or "", root=root, pair_info=pair_info,
                      rename_map=dict(rename_map or {}))


def read_sources_file(path: str | Path) -> list[SourceSpec]:
    """Parse and check a sources file; :class:`ConfigError` lists every problem with its place in the file
    (``sources[1].weight: ...``). Paths are resolved against the file's folder; files and folders must exist
    (the pair_info check happens where OT needs it)."""
    return read_dataset_tables(path, "sources", _KEYS, _one, tables="source tables", duplicate=(
        "source (names label the sources in logs and run_info.json; set distinct `name`s)"))


def read_dataset_tables(path: str | Path, table: str, keys: Sequence[str],
                        build: Callable[[dict, str, Path, list[tuple[str, str]]], Any],
                        *, tables: str, duplicate: str) -> list[Any]:
    """What a file listing datasets as ``[[<table>]]`` tables checks (a sources file, a target pool file): no other
    top-level key, a non-empty list of tables (``tables`` names them), known keys only (with a suggestion), each
    entry built by ``build(entry, "<table>[i]", file folder, problems)`` -- None when it added problems -- and
    distinct names (``duplicate`` names what shares one). :class:`ConfigError` lists every problem."""
    from otplug.config.files import read_config_file

    data, where = read_config_file(path)
    base = Path(path).expanduser().resolve().parent
    problems: list[tuple[str, str]] = [(str(k), suggest_key(k, [table])) for k in data if k != table]
    raw = data.get(table)
    if not isinstance(raw, list) or not raw:
        problems.append((table, f"must be a non-empty list of {tables}, got {show_value(raw)}"))
        raise ConfigError(problems, where)
    specs: list[Any] = []
    for i, entry in enumerate(raw):
        at = f"{table}[{i}]"
        if not isinstance(entry, dict):
            problems.append((at, f"must be a table with keys {', '.join(keys)}, got {show_value(entry)}"))
            continue
        bad = [k for k in entry if k not in keys]
        problems += [(f"{at}.{k}", suggest_key(k, keys)) for k in bad]
        spec = build(entry, at, base, problems) if not bad else None
        if spec is not None:
            specs.append(spec)
    names = [s.name for s in specs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append((table, f"name {name!r} is used by more than one {duplicate}"))
    if problems:
        raise ConfigError(problems, where)
    return specs


def _one(entry: dict, at: str, base: Path, problems: list[tuple[str, str]]) -> SourceSpec | None:
    n0 = len(problems)

    def text(key: str) -> str | None:
        v = entry.get(key)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            problems.append((f"{at}.{key}", f"must be a non-empty string, got {show_value(v)}"))
            return None
        return v

    def path(key: str, want_dir: bool) -> str | None:
        v = text(key)
        if v is None:
            return None
        p = Path(v).expanduser()
        p = p if p.is_absolute() else base / p
        ok = p.is_dir() if want_dir else p.is_file()
        if not ok:
            problems.append((f"{at}.{key}", f"no such {'directory' if want_dir else 'file'} {p}"))
        return str(p)

    repo_id, root = text("repo_id"), path("root", want_dir=True)
    pair_info = path("pair_info", want_dir=False)
    if repo_id is None and root is None and "root" not in entry:
        problems.append((at, "needs `root` (the dataset's folder) or `repo_id`"))
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
        problems.append((f"{at}.weight", f"must be a finite number > 0, got {show_value(weight)}"))
    rename = entry.get("rename_map", {})
    try:
        rename_map(None, None, rename)
    except FieldValueError as exc:  # the message alone: the loader puts the path in front
        problems.append((f"{at}.rename_map", exc.args[0]))
    name = text("name")
    if len(problems) > n0:
        return None
    label = name or (Path(root).name if root else str(repo_id).rsplit("/", 1)[-1])
    return SourceSpec(name=label, repo_id=repo_id or f"local/{Path(str(root)).name}", root=root,
                      pair_info=pair_info, weight=float(weight), rename_map=dict(rename))


def check_specs(specs: list[SourceSpec], *, needs_pairs: bool, flag: str) -> None:
    """Rules that depend on the run: every source needs its pair_info when OT pairs are loaded."""
    if needs_pairs:
        lacking = [s.name for s in specs if not s.pair_info]
        if lacking:
            raise OtplugError(f"{flag}: source(s) {lacking} have no pair_info; OT pairs need one per source "
                              "(`otplug pair --target ... --source ... --out DIR` writes them)")
