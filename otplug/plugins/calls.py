"""Calling into component code (built-in or third-party) so that every failure names the component.

Every call the core makes into a component -- a factory, a term's ``cost``/``required_keys``, a reducer, a
solver's ``solve`` -- runs inside :func:`calling`. An exception that is not an
:class:`~otplug.errors.OtplugError` becomes a :class:`~otplug.errors.PluginError` whose one-line message
names the component's kind and name, its plugin and distribution, and the original exception's type and
message (chained with ``raise ... from``). An ``OtplugError`` the component raised on purpose keeps its
class; for a third-party component its message gains the same attribution prefix. Out-of-memory errors,
``KeyboardInterrupt`` and exceptions of the policy's own encoder (raised through
``TermContext.embed``) pass through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs

from otplug.errors import OtplugError, PluginError

__all__ = ["Origin", "attribute", "calling", "contract_error", "one_line"]

_MESSAGE_LIMIT = 300


@attrs.frozen
class Origin:
    """Who provides a component: its kind (``term``), name (for a term, the config's name), registered type
    (for a term: its registered name), provider text (``cosine (otplug-cosine 0.1.0)``) and whether it is
    built into otplug."""

    kind: str
    name: str
    type: str | None = None
    provider: str = ""
    builtin: bool = False

    @classmethod
    def of(cls, provided: Any, *, name: str | None = None) -> Origin:
        """From a registry ``Provided`` (``name`` overrides the registered name, e.g. a term's config name)."""
        from otplug.plugins.manager import BUILTIN_DIST

        record = provided.record
        return cls(kind=record.kind, name=name if name is not None else record.name,
                   type=record.name if name is not None and name != record.name else None,
                   provider=provided.provider, builtin=provided.dist == BUILTIN_DIST)

    def label(self) -> str:
        """``term 'cos' (type 'cosine', from cosine (otplug-cosine 0.1.0))``."""
        parts = []
        if self.type is not None:
            parts.append(f"type {self.type!r}")
        if self.provider:
            parts.append(f"from {self.provider}")
        extra = f" ({', '.join(parts)})" if parts else ""
        return f"{self.kind} {self.name!r}{extra}"


def one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to about ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _passes_through(exc: BaseException) -> bool:
    # out-of-memory must stay recognisable (callers retry with smaller batches); torch's class lives in
    # torch (and torch.cuda), so match it by name rather than import torch here
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def attribute(exc: OtplugError, origin: Origin) -> OtplugError:
    """Prefix a third-party component's own ``OtplugError`` message with the component (once)."""
    if origin.builtin or getattr(exc, "_otplug_origin", None) is not None:
        return exc
    try:
        exc._otplug_origin = origin  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions accept attributes
        return exc
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{origin.label()}: {exc.args[0]}", *exc.args[1:])
    return exc


@contextlib.contextmanager
def calling(origin: Origin, call: str) -> Iterator[None]:
    """Run a call into ``origin``'s code; ``call`` says which (``cost()``, ``the factory``, ``solve()``)."""
    try:
        yield
    except OtplugError as exc:
        raise attribute(exc, origin)
    except Exception as exc:
        if _passes_through(exc) or getattr(exc, "_otplug_passthrough", False):
            raise
        message = one_line(str(exc)) or "(no message)"
        raise PluginError(
            f"{origin.label()}: {call} raised {type(exc).__name__}: {message}",
            kind=origin.kind, name=origin.name, provider=origin.provider,
        ) from exc


def contract_error(origin: Origin, call: str, problem: str) -> PluginError:
    """A component returned something that breaks its contract (``problem`` says what was expected)."""
    return PluginError(f"{origin.label()}: {call} {problem}", kind=origin.kind, name=origin.name,
                       provider=origin.provider)
