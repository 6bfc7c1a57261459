"""Reading config files (JSON, TOML, YAML). Every failure becomes a :class:`~otplug.errors.ConfigError`.

A file that does not parse is reported with its line and column; an empty file, a top level that is not a
table, a duplicate key (JSON, YAML; TOML rejects them itself) and an unreadable or missing file are errors
too.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from otplug.errors import ConfigError

__all__ = ["SUFFIXES", "parse_text", "read_config_file"]

SUFFIXES = {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


def read_config_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read and parse ``path``; returns ``(top-level table, source name)``."""
    source = str(path)
    p = Path(path)
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise ConfigError(
            [("", f"unsupported file type {p.suffix or '(no suffix)'!r}; use .json, .toml, .yaml or .yml")], source
        )
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("", "file not found")], source) from None
    except IsADirectoryError:
        raise ConfigError([("", "is a directory, not a config file")], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")], source) from None
    except OSError as exc:
        raise ConfigError([("", f"cannot read file: {exc.strerror or exc}")], source) from None
    return parse_text(text, fmt, source), source


def parse_text(text: str, fmt: str, source: str | None = None) -> dict[str, Any]:
    """Parse ``text`` as ``fmt`` (``json``, ``toml`` or ``yaml``) into the top-level table."""
    if not text.strip():
        raise ConfigError([("", "the file is empty; a config needs at least one term")], source)
    parser = {"json": _parse_json, "toml": _parse_toml, "yaml": _parse_yaml}[fmt]
    data = parser(text, source)
    if data is None:
        raise ConfigError([("", "the file holds no settings; a config needs at least one term")], source)
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
        raise ConfigError([("", f"the top level must be a table of settings, got {kind}")], source)
    return data


# -- JSON -----------------------------------------------------------------------------------------------
class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse_json(text: str, source: str | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError([("", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")], source) from None
    except _DuplicateKey as exc:
        line = _first_line_of_second(text, json.dumps(exc.args[0]))
        where = f" (line {line})" if line else ""
        raise ConfigError([("", f"not valid JSON: duplicate key {exc.args[0]!r}{where}")], source) from None


def _first_line_of_second(text: str, needle: str) -> int | None:
    """Line of the second occurrence of ``needle`` followed by a colon (a duplicate JSON key)."""
    hits = [m.start() for m in re.finditer(re.escape(needle) + r"\s*:", text)]
    if len(hits) < 2:
        return None
    return text.count("\n", 0, hits[1]) + 1


# -- TOML -----------------------------------------------------------------------------------------------
def _parse_toml(text: str, source: str | None) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        line = getattr(exc, "lineno", None)  # Python >= 3.14
        col = getattr(exc, "colno", None)
        if line is None:
            m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
            if m:
                line, col = int(m.group(1)), int(m.group(2))
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", msg)
        where = f" (line {line}, column {col})" if line else " (at the end of the file)"
        raise ConfigError([("", f"not valid TOML: {msg}{where}")], source) from None


# -- YAML -----------------------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a number (YAML 1.2), not a string."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or table", key_node.start_mark
            ) from None
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, source: str | None) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            what = f"{exc.context}, {exc.problem}"
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        ctx = exc.context_mark
        if ctx is not None and mark is not None and exc.problem_mark is not None and ctx.line != mark.line:
            where = f" (line {mark.line + 1}, column {mark.column + 1}; it started at line {ctx.line + 1}, column {ctx.column + 1})"
        raise ConfigError([("", f"not valid YAML: {what}{where}")], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"not valid YAML: {exc}")], source) from None
