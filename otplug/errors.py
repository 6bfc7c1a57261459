"""Exceptions users see. The CLI prints ``str(error)`` for these, never a traceback."""

from __future__ import annotations

__all__ = [
    "BatchError",
    "ConfigError",
    "DiskFullError",
    "DuplicateComponentError",
    "InputFileError",
    "OtplugError",
    "PluginError",
    "PluginLoadError",
    "UnknownComponentError",
]


def _cut(text: str, limit: int = 120) -> str:
    """A path for a message, cut to ``limit`` characters (a key in a file may be huge)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OtplugError(Exception):
    """Base class of every error otplug raises on purpose (bad input, bad plugin, bad config)."""


class PluginLoadError(OtplugError):
    """A plugin failed to import or its hook raised (fatal only with ``OTPLUG_STRICT_PLUGINS=1``)."""


class PluginError(OtplugError):
    """A component (term, solver, reducer...) raised, or returned something that breaks its contract.

    The message names the component's kind and name, the plugin/distribution that provides it and, for an
    exception, its type and message (the original is chained as ``__cause__``). ``kind``, ``name`` and
    ``provider`` are also attributes.
    """

    def __init__(self, message: str, *, kind: str = "", name: str = "", provider: str = "") -> None:
        super().__init__(message)
        self.kind, self.name, self.provider = kind, name, provider


class DuplicateComponentError(OtplugError):
    """Two plugins registered different components under the same name."""


class UnknownComponentError(OtplugError, KeyError):
    """A config or command named a component that no loaded plugin provides."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(OtplugError, ValueError):
    """A config is invalid. ``problems`` lists every ``(path, message)`` found."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid otplug config{where} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  {_cut(path)}: {msg}" if path else f"  {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


class InputFileError(OtplugError, ValueError):
    """An input file (config, pair_info) is missing, not a regular file, too large, not UTF-8 or not parseable
    within the reader's limits. ``path`` and ``problem`` (the message without the file) are attributes."""

    def __init__(self, path: str, problem: str, what: str = "file") -> None:
        self.path, self.problem, self.what = path, problem, what
        super().__init__(f"{what} {path}: {problem}")


class BatchError(OtplugError, ValueError):
    """A batch handed to ``OTLoss`` lacks a key, has mismatched shapes or non-finite values."""


class DiskFullError(OtplugError):
    """A file could not be written because the disk (or the user's quota) is full. ``path`` names the file."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
