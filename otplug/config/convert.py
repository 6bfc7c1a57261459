"""A strict cattrs converter and the rendering of its errors as ``(path, message)`` problems.

cattrs' defaults are loose where a config must be strict, so this module registers its own hooks:

* primitives: ``str`` only from a string, ``bool`` only from a bool, ``int`` only from an int (not a bool,
  not ``8.0``), ``float`` from an int or a float (never a bool or a string), finite only;
* containers: lists and tuples only from a list/tuple (a string is not a sequence of characters), tuples of a
  fixed length are checked, mappings need string keys;
* unions try each member in turn, ``X | None`` maps ``null`` to ``None``; ``Literal`` and ``Enum`` list the
  valid values;
* attrs classes: unknown keys (with the closest valid key), missing keys, each field structured by its type,
  and then **every** field validator run on its own so that all problems are collected and each validator's
  own message is kept (cattrs' ``transform_error`` would collapse it to "invalid value").

Errors are raised as :class:`StructureProblems` carrying every ``(path, message)`` found, with paths written
like ``terms[1].dim_slice``. Other hooks may be registered on :data:`converter` (e.g. for a plugin's own
types); any exception they raise is reported at the path of the value.
"""

from __future__ import annotations

import difflib
import enum
import math
import pathlib
import typing
from collections import abc
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs._compat import is_literal, is_mapping, is_mutable_set, is_frozenset, is_sequence, is_tuple, is_union_type

from otplug.validators import show_value

__all__ = [
    "Problem",
    "StructureProblems",
    "converter",
    "describe_value",
    "exception_message",
    "join_path",
    "structure",
    "structure_attrs",
    "suggest_key",
    "unstructure",
]

Problem = tuple[str, str]


class StructureProblems(Exception):
    """Every problem found while structuring one value; paths are relative to that value."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.problems))


def join_path(prefix: str, sub: str | int) -> str:
    """``join_path("terms", 1) == "terms[1]"``, ``join_path("terms[1]", "dim_slice") == "terms[1].dim_slice"``."""
    if isinstance(sub, int):
        return f"{prefix}[{sub}]"
    if not sub:
        return prefix
    if sub.startswith("["):
        return prefix + sub
    return f"{prefix}.{sub}" if prefix else sub


def describe_value(value: Any) -> str:
    """``str '1'``, ``bool True``, ``null`` -- for messages about wrong types."""
    if value is None:
        return "null"
    kind = {dict: "table", list: "list"}.get(type(value), type(value).__name__)
    return f"{kind} {show_value(value, 60)}"


def exception_message(exc: BaseException) -> str:
    """The user-facing message of an exception (attrs validators pass extra args after the message)."""
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


def suggest_key(key: Any, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    msg = f"unknown key {show_value(key)}"
    close = difflib.get_close_matches(str(key)[:200], valid, n=1, cutoff=0.6)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    if valid:
        msg += f" (valid keys: {', '.join(valid)})"
    return msg


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if tp is float:
        return "number"
    if tp is int:
        return "integer"
    if tp is str:
        return "string"
    if tp is bool:
        return "boolean (true/false)"
    if isinstance(tp, type):
        if attrs.has(tp):
            return "table"
        return tp.__name__
    return str(tp).replace("typing.", "")


def _fail(message: str, path: str = "") -> typing.NoReturn:
    raise StructureProblems([(path, message)])


# -- primitives -----------------------------------------------------------------------------------------
def _structure_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        _fail(f"expected a string, got {describe_value(value)}")
    return value


def _structure_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        _fail(f"expected true or false, got {describe_value(value)}")
    return value


def _structure_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"expected an integer, got {describe_value(value)}")
    return int(value)


def _structure_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(f"expected a number, got {describe_value(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        _fail(f"must be a finite number, got {show_value(value)}")
    if not math.isfinite(value):
        _fail(f"must be a finite number, got {show_value(value)}")
    return value


def _structure_path(value: Any, _: Any) -> pathlib.Path:
    if isinstance(value, pathlib.Path):
        return value
    if not isinstance(value, str) or not value:
        _fail(f"expected a path (string), got {describe_value(value)}")
    return pathlib.Path(value)


def _structure_any(value: Any, _: Any) -> Any:
    return value


# -- containers -----------------------------------------------------------------------------------------
def _is_seq_type(tp: Any) -> bool:
    return is_sequence(tp) or is_tuple(tp) or is_mutable_set(tp) or is_frozenset(tp)


def _structure_seq(value: Any, tp: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        _fail(f"expected a list, got {describe_value(value)}")
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    problems: list[Problem] = []
    out: list[Any] = []
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            _fail(f"expected a list of {len(args)} items, got {len(value)}: {show_value(list(value))}")
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    for i, (item, item_tp) in enumerate(zip(value, item_types, strict=True)):
        try:
            out.append(converter.structure(item, item_tp))
        except StructureProblems as exc:
            problems += [(join_path(f"[{i}]", p), m) for p, m in exc.problems]
        except Exception as exc:  # noqa: BLE001 -- a plugin's own hook
            problems.append((f"[{i}]", exception_message(exc)))
    if problems:
        raise StructureProblems(problems)
    if origin in (list, abc.MutableSequence):
        return out
    if origin in (set, abc.MutableSet, abc.Set):
        return set(out)
    if origin is frozenset:
        return frozenset(out)
    return tuple(out)  # tuple, Sequence: immutable, so frozen attrs classes stay hashable


def _structure_mapping(value: Any, tp: Any) -> dict:
    if not isinstance(value, Mapping):
        _fail(f"expected a table, got {describe_value(value)}")
    args = typing.get_args(tp)
    key_tp, val_tp = (args + (Any, Any))[:2] if args else (Any, Any)
    problems: list[Problem] = []
    out = {}
    for k, v in value.items():
        try:
            kk = converter.structure(k, key_tp)
            out[kk] = converter.structure(v, val_tp)
        except StructureProblems as exc:
            problems += [(join_path(str(k), p), m) for p, m in exc.problems]
        except Exception as exc:  # noqa: BLE001
            problems.append((str(k), exception_message(exc)))
    if problems:
        raise StructureProblems(problems)
    return out


def _structure_union(value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        _fail(f"expected {' or '.join(_type_name(a) for a in args)}, got null")
    members = [a for a in args if a is not type(None)]
    if len(members) == 1:
        return converter.structure(value, members[0])
    # exact primitive matches first (so 1 stays an int in ``int | float``), then in declaration order
    for member in members:
        if member in (str, bool, int, float) and type(value) is member:
            return converter.structure(value, member)
    for member in members:
        try:
            return converter.structure(value, member)
        except Exception:  # noqa: BLE001,S112 -- try the next member
            continue
    _fail(f"expected {' or '.join(_type_name(a) for a in args)}, got {describe_value(value)}")


def _structure_literal(value: Any, tp: Any) -> Any:
    allowed = typing.get_args(tp)
    for option in allowed:
        if type(option) is type(value) and option == value:
            return option
    close = difflib.get_close_matches(str(value)[:200], [str(a) for a in allowed], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    _fail(f"must be one of {', '.join(repr(a) for a in allowed)}, got {show_value(value)}{hint}")


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _structure_enum(value: Any, tp: Any) -> Any:
    for member in tp:
        if type(member.value) is type(value) and member.value == value:
            return member
    _fail(f"must be one of {', '.join(repr(m.value) for m in tp)}, got {show_value(value)}")


# -- attrs classes --------------------------------------------------------------------------------------
def _init_fields(cls: type) -> list[attrs.Attribute]:
    return [a for a in attrs.fields(cls) if a.init]


def _init_name(a: attrs.Attribute) -> str:
    return a.alias or a.name.lstrip("_")


def structure_attrs(
    value: Any,
    cls: type,
    *,
    provided: Mapping[str, Any] | None = None,
    exclude: Iterable[str] = (),
    also_valid: Iterable[str] = (),
) -> Any:
    """Build the attrs class ``cls`` from a table, strictly. Raises :class:`StructureProblems`.

    ``provided``: init arguments already built by the caller (not read from ``value``); ``exclude``: keys of
    ``value`` that the caller handles itself (neither unknown nor structured here); ``also_valid``: more
    key names to offer when suggesting a replacement for an unknown key.
    """
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        _fail(f"expected a table, got {describe_value(value)}")
    provided = dict(provided or {})
    exclude = set(exclude)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 -- unresolvable annotations: fall back to the raw ones
        hints = {}
    fields = _init_fields(cls)
    by_key = {_init_name(a): a for a in fields if _init_name(a) not in provided}
    problems: list[Problem] = []
    for key in value:
        if key in exclude:
            continue
        if not isinstance(key, str):
            problems.append(("", f"keys must be strings, got {describe_value(key)}"))
        elif key not in by_key:
            problems.append((key, suggest_key(key, [*by_key, *also_valid])))
    kwargs: dict[str, Any] = dict(provided)
    for key, a in by_key.items():
        if key not in value:
            if a.default is attrs.NOTHING:
                problems.append((key, "missing required key"))
            continue
        tp = hints.get(a.name, a.type)
        if tp is None or isinstance(tp, str):
            tp = Any
        try:
            kwargs[key] = converter.structure(value[key], tp)
        except StructureProblems as exc:
            problems += [(join_path(key, p), m) for p, m in exc.problems]
        except Exception as exc:  # noqa: BLE001
            problems.append((key, exception_message(exc)))
    if problems:
        # Still check the fields that did structure, so that one bad field does not hide another.
        problems += _validate_alone(cls, kwargs, provided)
        raise StructureProblems(problems)
    # Build without validators, then run every validator on its own so that all problems are reported.
    # (attrs.validators.disabled() flips a process-wide switch for this short block; configs are loaded
    # at start-up, not concurrently with other attrs construction that relies on validation.)
    try:
        with attrs.validators.disabled():
            draft = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 -- a converter or __attrs_post_init__
        _fail(exception_message(exc))
    for a in attrs.fields(cls):
        if a.validator is None:
            continue
        try:
            a.validator(draft, a, getattr(draft, a.name))
        except Exception as exc:  # noqa: BLE001
            problems.append((_init_name(a) if a.init else "", exception_message(exc)))
    if problems:
        raise StructureProblems(problems)
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001
        _fail(exception_message(exc))


def _validate_alone(cls: type, kwargs: Mapping[str, Any], provided: Mapping[str, Any]) -> list[Problem]:
    """Run the validators of the structured fields without an instance (validators that need it are skipped)."""
    problems: list[Problem] = []
    for a in _init_fields(cls):
        key = _init_name(a)
        if a.validator is None or key not in kwargs or key in provided:
            continue
        value = kwargs[key]
        try:
            if a.converter is not None and not isinstance(a.converter, attrs.Converter):
                value = a.converter(value)
            a.validator(None, a, value)
        except AttributeError:
            continue  # it needs the instance (a cross-field check): it runs once everything structures
        except Exception as exc:  # noqa: BLE001
            problems.append((key, exception_message(exc)))
    return problems


def _structure_attrs_hook(value: Any, cls: type) -> Any:
    return structure_attrs(value, cls)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook_func(lambda t: isinstance(t, type) and issubclass(t, pathlib.PurePath), _structure_path)
    conv.register_structure_hook_func(lambda t: t is Any or t is object, _structure_any)
    conv.register_structure_hook_func(_is_seq_type, _structure_seq)
    conv.register_structure_hook_func(is_mapping, _structure_mapping)
    conv.register_structure_hook_func(_is_enum, _structure_enum)
    conv.register_structure_hook_func(is_literal, _structure_literal)
    conv.register_structure_hook_func(is_union_type, _structure_union)
    conv.register_structure_hook_func(attrs.has, _structure_attrs_hook)
    return conv


converter: cattrs.Converter = _make_converter()


def structure(value: Any, tp: Any, path: str = "") -> Any:
    """Structure ``value`` as ``tp``; raise :class:`StructureProblems` with paths prefixed by ``path``."""
    try:
        return converter.structure(value, tp)
    except StructureProblems as exc:
        raise StructureProblems([(join_path(path, p), m) for p, m in exc.problems]) from None
    except Exception as exc:  # noqa: BLE001
        raise StructureProblems([(path, exception_message(exc))]) from None


def unstructure(value: Any) -> Any:
    """A JSON-able form: attrs classes become dicts of their init fields, tuples/sets become lists."""
    if attrs.has(type(value)):
        out = {}
        for a in _init_fields(type(value)):
            v = getattr(value, a.name)
            if v is None and a.default is None:
                continue  # an unset optional field: leave it out (TOML has no null)
            out[_init_name(a)] = unstructure(v)
        return out
    if isinstance(value, Mapping):
        return {str(k): unstructure(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [unstructure(v) for v in items]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return converter.unstructure(value)
