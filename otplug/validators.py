"""Small attrs validators for config fields, shared by the core and by plugins.

Every config class of otplug (and of a plugin, see ``docs/plugins.md``) checks its numbers with these, so
that the same mistake gets the same message everywhere::

    import attrs
    from otplug import validators as v

    @attrs.frozen(kw_only=True)
    class MyTermConfig:
        src_key: str
        scale: float = attrs.field(default=1.0, validator=v.positive)
        margin: float = attrs.field(default=0.0, validator=v.non_negative)
        mix: float = attrs.field(default=0.5, validator=v.in_range(0, 1))
        steps: int = attrs.field(default=10, validator=v.positive_int)

Each validator is a small slotted callable ``(instance, attribute, value)`` with a readable ``repr``. It
raises :class:`FieldTypeError` / :class:`FieldValueError` (subclasses of ``TypeError`` / ``ValueError``):
``str(error)`` names the field (``scale: must be a finite number > 0, got -1.0``) and ``error.args[0]`` is
the message alone, which the config loader prefixes with the full path (``terms[0].scale: ...``). Values
are shown truncated (long strings and huge numbers never flood a message). ``bool`` is never accepted as a
number, and numbers are finite unless a validator says otherwise.

Ready-made validators: :data:`finite`, :data:`positive`, :data:`non_negative`, :data:`positive_int`,
:data:`non_negative_int`, :data:`boolean`, :data:`batch_key` (a non-empty key or ``None``),
:data:`dim_slice` (``[start, stop)`` or ``None``). Factories: :func:`in_range`, :func:`at_least`, :func:`one_of`.
Any number validator takes a hint appended to its message: ``v.positive.with_hint("use 10 for ...")``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from otplug.errors import OtplugError

__all__ = [
    "OptionError",
    "check_option",
    "FieldTypeError",
    "FieldValueError",
    "NumberValidator",
    "OneOf",
    "at_least",
    "batch_key",
    "boolean",
    "dim_slice",
    "finite",
    "in_range",
    "non_negative",
    "non_negative_int",
    "one_of",
    "positive",
    "positive_int",
    "rename_map",
    "show_value",
]

_SHOW_LIMIT = 80


def show_value(value: Any, limit: int = _SHOW_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters (``'aaaa...' (1000000 characters)``); huge integers
    are shown by their number of digits, never converted to text in full."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer with about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, (str, bytes)) and len(value) > limit:
        text = repr(value[:limit])
        return f"{text[:-1]}...{text[-1]} ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > 64:
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 -- a broken __repr__ must not hide the real problem
        return f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _field_name(attribute: Any) -> str | None:
    name = getattr(attribute, "alias", None) or getattr(attribute, "name", None)
    return name.lstrip("_") if isinstance(name, str) else None


class _FieldError:
    """``args[0]``: the message alone (the config loader adds the path); ``str()``: ``<field>: <message>``."""

    def __str__(self) -> str:
        message = str(self.args[0]) if self.args else ""
        field = self.args[1] if len(self.args) > 1 else None
        return f"{field}: {message}" if field else message


class FieldValueError(_FieldError, ValueError):
    """A config field has a value of the right type that is out of bounds."""


class FieldTypeError(_FieldError, TypeError):
    """A config field has a value of the wrong type."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class NumberValidator:
    """A real number (never a bool), finite unless ``allow_inf``, within optional bounds; ``integer``
    additionally requires an ``int``. Build one with the factories of this module."""

    __slots__ = ("allow_inf", "hint", "integer", "low", "low_open", "high", "high_open", "name")

    def __init__(self, name: str, *, low: float | None = None, low_open: bool = False, high: float | None = None,
                 high_open: bool = False, integer: bool = False, allow_inf: bool = False, hint: str = "") -> None:
        self.name = name
        self.low, self.low_open, self.high, self.high_open = low, low_open, high, high_open
        self.integer, self.allow_inf, self.hint = integer, allow_inf, hint

    def with_hint(self, hint: str) -> NumberValidator:
        """The same check with ``hint`` appended to its messages (e.g. what a sensible value is)."""
        return NumberValidator(self.name, low=self.low, low_open=self.low_open, high=self.high,
                               high_open=self.high_open, integer=self.integer, allow_inf=self.allow_inf, hint=hint)

    def expected(self) -> str:
        """What the field takes, in words: ``a finite number > 0``, ``an integer >= 1``..."""
        what = "an integer" if self.integer else ("a number" if self.allow_inf else "a finite number")
        bound = self._bound()
        return f"{what} {bound}" if bound else what

    def _bound(self) -> str:
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {lo}{_num(self.low)}, {_num(self.high)}{hi}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return ""

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        field = _field_name(attribute)
        suffix = f" ({self.hint})" if self.hint else ""
        if self.integer and (isinstance(value, bool) or not isinstance(value, int)):
            raise FieldTypeError(f"expected an integer, got {_described(value)}{suffix}", field)
        if not _is_number(value):
            raise FieldTypeError(f"expected a number, got {_described(value)}{suffix}", field)
        if not self.integer and isinstance(value, int) and value.bit_length() > 1024:  # float() would overflow
            raise FieldValueError(f"must be a finite number, got {show_value(value)}{suffix}", field)
        if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not self.allow_inf)):
            raise FieldValueError(f"must be a finite number, got {show_value(value)}{suffix}", field)
        ok = True
        if self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            bound = self._bound()
            if self.integer:
                bound = f"an integer {bound}"
            elif bound.startswith("in "):
                bound = f"a number {bound}"
            raise FieldValueError(f"must be {bound}, got {show_value(value)}{suffix}", field)

    def __repr__(self) -> str:
        return f"<otplug validator {self.name}: {self.expected()}>"


class OneOf:
    """The value is one of a fixed set of options (compared by type and value: ``1`` is not ``True``)."""

    __slots__ = ("options",)

    def __init__(self, options: Iterable[Any]) -> None:
        self.options = tuple(options)

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if not any(type(o) is type(value) and o == value for o in self.options):
            raise FieldValueError(f"must be one of {', '.join(repr(o) for o in self.options)}, got "
                                  f"{show_value(value)}", _field_name(attribute))

    def __repr__(self) -> str:
        return f"<otplug validator one_of({', '.join(repr(o) for o in self.options)})>"


class _Boolean:
    __slots__ = ()

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, bool):
            raise FieldTypeError(f"expected true or false, got {_described(value)}",
                                 _field_name(attribute))

    def __repr__(self) -> str:
        return "<otplug validator boolean: true or false>"


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _described(value: Any) -> str:
    return "null" if value is None else f"{_kind(value)} {show_value(value)}"


def _kind(value: Any) -> str:
    return {dict: "table", list: "list"}.get(type(value), type(value).__name__)


#: a finite real number
finite = NumberValidator("finite")
#: a finite number > 0
positive = NumberValidator("positive", low=0, low_open=True)
#: a finite number >= 0
non_negative = NumberValidator("non_negative", low=0)
#: an integer >= 1 (not a bool, not 8.0)
positive_int = NumberValidator("positive_int", low=1, integer=True)
#: an integer >= 0
non_negative_int = NumberValidator("non_negative_int", low=0, integer=True)
#: exactly true or false (not 0/1, not "yes")
boolean = _Boolean()


class _BatchKey:
    __slots__ = ()

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not value.strip():
            raise FieldValueError(f"must be a non-empty batch key such as 'observation.state', got "
                                  f"{show_value(value)}", _field_name(attribute))

    def __repr__(self) -> str:
        return "<otplug validator batch_key: a non-empty batch key, or null>"


class _DimSlice:
    __slots__ = ()

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        field = _field_name(attribute)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise FieldValueError(f"must be [start, stop], got {show_value(_as_list(value))}", field)
        start, stop = value
        if any(isinstance(x, bool) or not isinstance(x, int) for x in value):
            raise FieldTypeError(f"must be two integers [start, stop], got {show_value(list(value))}", field)
        if start < 0 or stop < 0:
            raise FieldValueError("must be [start, stop] with 0 <= start < stop (no negative indices), got "
                                  f"{show_value(list(value))}", field)
        if stop <= start:
            raise FieldValueError("is empty or reversed: [start, stop] needs start < stop, got "
                                  f"{show_value(list(value))}", field)

    def __repr__(self) -> str:
        return "<otplug validator dim_slice: [start, stop] with 0 <= start < stop, or null>"


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def in_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, integer: bool = False) -> NumberValidator:
    """A finite number (an integer with ``integer=True``) in ``[low, high]``; ``low_open``/``high_open``
    exclude the bound (``in_range(0, 1, low_open=True, high_open=True)`` is the open interval (0, 1))."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"in_range: low {low!r} > high {high!r}")
    return NumberValidator("in_range", low=low, low_open=low_open, high=high, high_open=high_open, integer=integer)


def at_least(low: float, *, integer: bool = False) -> NumberValidator:
    """A finite number (an integer with ``integer=True``) >= ``low``."""
    return NumberValidator("at_least", low=low, integer=integer)


def one_of(*options: Any) -> OneOf:
    """One of ``options`` exactly (``one_of("none", "l2")``)."""
    if len(options) == 1 and isinstance(options[0], (list, tuple)):
        options = tuple(options[0])
    return OneOf(options)


#: a non-empty batch key string (``None`` allowed: an optional key)
batch_key = _BatchKey()
#: a last-axis slice ``[start, stop)`` of two integers with 0 <= start < stop (``None`` allowed)
dim_slice = _DimSlice()


class _RenameMap:
    """A feature-name map (lerobot's ``rename_map`` shape): a mapping of non-empty names to non-empty names."""

    __slots__ = ()

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(n, str) and k and n
                                                  for k, n in value.items()):
            raise FieldValueError("must map source feature names to target feature names, e.g. "
                                  '{"observation.images.cam_high": "observation.images.top"}, got '
                                  f"{show_value(value)}", _field_name(attribute))

    def __repr__(self) -> str:
        return "<otplug validator rename_map: {source name: target name}>"


#: a feature-name map ``{source name: target name}`` (``--ot.source_rename_map``, a sources file's ``rename_map``)
rename_map = _RenameMap()


class OptionError(OtplugError, ValueError):
    """A command-line option (``--ot.<field>``, a study flag) failed a validator of this module; ``str()`` is
    ``<flag>: <message>`` (the CLI shows it as one line, exit code 2)."""


class _Named:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def check_option(flag: str, value: Any, validator: Any) -> None:
    """Run ``validator`` (any of this module's) on the option ``flag``: the same mistake gets the same message as in
    a config file, with the flag in front (``--ot.batch_size: must be an integer >= 1, got 0``)."""
    try:
        validator(None, _Named(flag), value)
    except (FieldValueError, FieldTypeError) as exc:
        raise OptionError(str(exc)) from None
