"""Reading config files (JSON, TOML, YAML). Every failure becomes a :class:`~otplug.errors.ConfigError`.

A file that does not parse is reported with its line and column; an empty file, a top level that is not a
table, a duplicate key (JSON, YAML; TOML rejects them itself) and an unreadable or missing file are errors
too.

Every input is bounded, so that no file can hang, exhaust memory or crash the reader with a traceback:

* only regular files are opened: a FIFO, a device (``/dev/zero``), a socket or a directory is refused after a
  ``stat``, before any ``open`` (a FIFO cannot block the reader);
* the size is capped (:data:`CONFIG_MAX_BYTES` for configs; :func:`read_text_file` takes the cap, e.g.
  :data:`PAIR_INFO_MAX_BYTES` for pair_info JSON) and never more than the cap is read, whatever ``stat`` said;
* the bytes must be UTF-8 (the error names the byte offset and line; a leading BOM is dropped);
* nesting is limited to :data:`MAX_DEPTH` levels and integers to 64 bits (:data:`MAX_INT_BITS`), checked
  during JSON parsing and after TOML/YAML parsing; runs of more than :data:`MAX_NUMBER_DIGITS` digits are
  refused before any parser converts them;
* YAML aliases may expand to at most :data:`YAML_ALIAS_BUDGET` values per document (a "billion laughs"
  document fails at once), and recursive aliases are refused;
* values quoted in messages are cut to about 80 characters.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from otplug.validators import show_value
from otplug.errors import ConfigError, InputFileError, OtplugError

__all__ = [
    "CONFIG_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_NUMBER_DIGITS",
    "PAIR_INFO_MAX_BYTES",
    "SUFFIXES",
    "YAML_ALIAS_BUDGET",
    "check_tree",
    "parse_text",
    "read_config_file",
    "read_json_file",
    "read_text_file",
]

SUFFIXES = {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}

#: largest config file read (1 MiB; a real config is a few KiB)
CONFIG_MAX_BYTES = 1 << 20
#: largest pair_info JSON file read (256 MiB)
PAIR_INFO_MAX_BYTES = 256 << 20
#: deepest nesting of tables/lists accepted (the top-level table is level 1)
MAX_DEPTH = 64
#: integers must fit a signed 64-bit integer
MAX_INT_BITS = 63
#: a run of more digits than this is refused before parsing (int() of huge digit strings is quadratic)
MAX_NUMBER_DIGITS = 1000
#: values YAML aliases (``*name``, merge keys ``<<: *name``) may expand to in one document
YAML_ALIAS_BUDGET = 1000

_KIND_WORDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_LONG_DIGITS = re.compile(rb"[0-9]{%d,}" % (MAX_NUMBER_DIGITS + 1))


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, words in _KIND_WORDS:
        if test(mode):
            return words
    return "not a regular file"


def _size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} bytes"


def _read_bytes(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    name = str(path)

    def fail(problem: str) -> InputFileError:
        return InputFileError(name, problem, what)

    try:
        st = os.stat(path)  # follows symlinks: a link to a FIFO is a FIFO
    except FileNotFoundError:
        raise fail("file not found") from None
    except PermissionError:
        raise fail("permission denied") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise fail(f"cannot read file: {getattr(exc, 'strerror', None) or exc}") from None
    kind = _not_regular(st.st_mode)
    if kind is not None:
        raise fail(f"is {kind}, not a regular file; refusing to read it")
    if st.st_size > max_bytes:
        raise fail(f"is {_size(st.st_size)}; a {what} may be at most {_size(max_bytes)}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise fail("permission denied") from None
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # it may have been replaced since the stat above
        kind = _not_regular(st.st_mode)
        if kind is not None:
            raise fail(f"is {kind}, not a regular file; refusing to read it")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:  # never trust st_size (it grows, /proc files say 0)
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise fail(f"is larger than {_size(max_bytes)}, the most a {what} may be")
        return b"".join(chunks)
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _decode(data: bytes, name: str, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputFileError(name, f"not UTF-8 text ({exc.reason} at byte offset {exc.start}, line {line})",
                             what) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text_file(path: str | os.PathLike, *, max_bytes: int = CONFIG_MAX_BYTES, what: str = "file") -> str:
    """The UTF-8 text of the regular file ``path``, at most ``max_bytes`` long.

    Raises :class:`~otplug.errors.InputFileError` (``"<what> <path>: <problem>"``) for a missing file, a
    non-regular file (FIFO, device, socket, directory: refused before opening), a file larger than the cap,
    bytes that are not UTF-8 (naming the byte offset) and read errors.
    """
    return _decode(_read_bytes(path, max_bytes, what), str(path), what)


def read_json_file(
    path: str | os.PathLike,
    *,
    max_bytes: int = PAIR_INFO_MAX_BYTES,
    what: str = "JSON file",
    max_depth: int = MAX_DEPTH,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Read and parse a JSON file with the limits of :func:`read_text_file` plus nesting depth and 64-bit
    integers; every problem is an :class:`~otplug.errors.InputFileError` naming the file (and the line of a
    syntax error). ``object_pairs_hook`` may raise :class:`~otplug.errors.OtplugError` to reject content."""
    text = read_text_file(path, max_bytes=max_bytes, what=what)
    try:
        data = _load_json(text, object_pairs_hook)
    except _LimitError as exc:
        raise InputFileError(str(path), exc.args[0], what) from None
    except json.JSONDecodeError as exc:
        raise InputFileError(str(path), f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                             what) from None
    problem = check_tree(data, max_depth=max_depth)
    if problem:
        raise InputFileError(str(path), problem, what)
    return data


def read_config_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read and parse ``path``; returns ``(top-level table, source name)``."""
    source = str(path)
    try:
        data = _read_bytes(path, CONFIG_MAX_BYTES, "config file")
    except InputFileError as exc:
        raise ConfigError([("", exc.problem)], source) from None
    p = Path(path)
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise ConfigError(
            [("", f"unsupported file type {show_value(p.suffix) if p.suffix else '(no suffix)'}; use .json, .toml, "
                  ".yaml or .yml")], source
        )
    try:
        text = _decode(data, source, "config file")
    except InputFileError as exc:
        raise ConfigError([("", exc.problem)], source) from None
    return parse_text(text, fmt, source), source


def parse_text(text: str, fmt: str, source: str | None = None) -> dict[str, Any]:
    """Parse ``text`` as ``fmt`` (``json``, ``toml`` or ``yaml``) into the top-level table, within the limits
    of this module (size, nesting depth, integer size, YAML alias expansion)."""
    if len(text) > CONFIG_MAX_BYTES:
        raise ConfigError([("", f"the config text is {_size(len(text))}; a config may be at most "
                                f"{_size(CONFIG_MAX_BYTES)}")], source)
    if not text.strip():
        raise ConfigError([("", "the file is empty; a config needs at least one term")], source)
    if fmt != "json":  # JSON converts integers through a checked hook
        long = _LONG_DIGITS.search(text.encode("utf-8", "surrogatepass"))
        if long is not None:
            line = text.count("\n", 0, long.start()) + 1 if long.start() < len(text) else "?"
            raise ConfigError([("", f"a number with {long.end() - long.start()} digits (line {line}); numbers may "
                                    f"have at most {MAX_NUMBER_DIGITS} digits")], source)
    parser = {"json": _parse_json, "toml": _parse_toml, "yaml": _parse_yaml}[fmt]
    try:
        data = parser(text, source)
    except RecursionError:
        raise ConfigError([("", f"not valid {fmt.upper()}: nested too deeply (a config may nest at most "
                                f"{MAX_DEPTH} levels)")], source) from None
    except _LimitError as exc:
        raise ConfigError([("", exc.args[0])], source) from None
    if data is None:
        raise ConfigError([("", "the file holds no settings; a config needs at least one term")], source)
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
        raise ConfigError([("", f"the top level must be a table of settings, got {kind}")], source)
    problem = check_tree(data)
    if problem:
        raise ConfigError([("", problem)], source)
    return data


# -- limits on parsed values --------------------------------------------------------------------------
class _LimitError(Exception):
    """A parsed document breaks one of the limits (message: the problem, for the file's error)."""


def _path_part(key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"[{key}]"
    text = key if isinstance(key, str) else repr(key)
    return "." + (text if len(text) <= 30 else text[:27] + "...")


def check_tree(data: Any, *, max_depth: int = MAX_DEPTH, max_int_bits: int = MAX_INT_BITS) -> str | None:
    """The first limit ``data`` (a parsed document) breaks, as a message, or ``None``: nesting deeper than
    ``max_depth`` tables/lists, or an integer (value or key) that does not fit ``max_int_bits`` bits + sign.
    Iterative, so a deep document cannot exhaust the stack; shared (aliased) values are visited once."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    seen: set[int] = set()
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > max_int_bits:
                where = f" at {path.lstrip('.') or 'the top level'}" if path else ""
                return (f"integer too large{where}: {show_value(value)} (integers must fit in 64 bits)")
            continue
        if not isinstance(value, (dict, list, tuple)):
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        if depth > max_depth:
            shown = path.lstrip(".")
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            return f"nested deeper than {max_depth} levels (at {shown})"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and isinstance(key, int) and not isinstance(key, bool):
                stack.append((key, depth, path))
            stack.append((item, depth + 1, path + _path_part(key)))
    return None


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


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 20:  # refuse before converting (int() of a huge digit string is slow)
        raise _LimitError(f"integer too large: a number with {digits} digits (integers must fit in 64 bits)")
    value = int(text)
    if value.bit_length() > MAX_INT_BITS:
        raise _LimitError(f"integer too large: {value} (integers must fit in 64 bits)")
    return value


def _load_json(text: str, object_pairs_hook: Any = None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook, parse_int=_json_int)
    except RecursionError:
        raise _LimitError(f"not valid JSON: nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        if isinstance(exc, (json.JSONDecodeError, OtplugError)):  # OtplugError: the caller's hook, as raised
            raise
        raise _LimitError(f"not valid JSON: {show_value(str(exc))}") from None


def _parse_json(text: str, source: str | None) -> Any:
    try:
        return _load_json(text, _no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError([("", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")], source) from None
    except _DuplicateKey as exc:
        line = _first_line_of_second(text, json.dumps(exc.args[0]))
        where = f" (line {line})" if line else ""
        raise ConfigError([("", f"not valid JSON: duplicate key {show_value(exc.args[0])}{where}")], source) from None


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
    except ValueError as exc:
        if not isinstance(exc, tomllib.TOMLDecodeError):  # e.g. the int() digit limit
            raise ConfigError([("", f"not valid TOML: {show_value(str(exc))}")], source) from None
        _toml_error(exc, source)


def _toml_error(exc: tomllib.TOMLDecodeError, source: str | None) -> typing.NoReturn:
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
    """SafeLoader that rejects duplicate keys, reads ``1e-3`` as a number (YAML 1.2), not a string, and
    bounds alias expansion: every ``*alias`` costs the number of values it stands for, at most
    :data:`YAML_ALIAS_BUDGET` per document; a recursive alias is refused."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if event.anchor in getattr(self, "_open_anchors", ()):
                raise yaml.composer.ComposerError(
                    None, None, f"a recursive alias (*{show_value(event.anchor)[1:-1]} inside its own value)",
                    event.start_mark)
            if node is not None:
                spent = getattr(self, "_alias_spent", 0) + _node_size(node, event.start_mark)
                self._alias_spent = spent
                if spent > YAML_ALIAS_BUDGET:
                    raise yaml.composer.ComposerError(
                        None, None, f"aliases expand to more than {YAML_ALIAS_BUDGET} values (alias "
                        f"*{show_value(event.anchor)[1:-1]}); expand the document or use fewer aliases",
                        event.start_mark)
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor: Any) -> Any:
        with self._composing(anchor):
            return super().compose_sequence_node(anchor)

    def compose_mapping_node(self, anchor: Any) -> Any:
        with self._composing(anchor):
            return super().compose_mapping_node(anchor)

    @contextlib.contextmanager
    def _composing(self, anchor: Any) -> Any:
        open_anchors = self.__dict__.setdefault("_open_anchors", set())
        if anchor is not None:
            open_anchors.add(anchor)
        try:
            yield
        finally:
            open_anchors.discard(anchor)


def _node_size(root: yaml.Node, mark: Any) -> int:
    """Values a composed node stands for once expanded; raises on a node that contains itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > YAML_ALIAS_BUDGET:
                return sizes[key]
            continue
        if key in sizes:
            continue
        if key in active:
            raise yaml.composer.ComposerError(None, None, "a recursive alias (a value that contains itself)", mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # merged pairs (``<<: *base``) first, then the mapping's own
    merged = len(node.value) - own
    out: dict[Any, Any] = {}
    own_keys: set[Any] = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or table", key_node.start_mark
            ) from None
        if i >= merged:  # the mapping's own keys may override merged ones, but not repeat each other
            if key in own_keys:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {show_value(key)}",
                                                        key_node.start_mark)
            own_keys.add(key)
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
