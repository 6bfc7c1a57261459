"""Metric sinks: where training metrics and transport plans go.

Every sink is ``Sink(run_dir: Path, **options)`` with ``log(step, metrics)``, ``log_plan(step, plan, labels)``
and ``close()``. They are registered as plugins (``otplug list-sinks``); :func:`make_sinks` builds them by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from otplug.sinks.base import Sink, SinkGroup

__all__ = ["Sink", "SinkGroup", "make_sinks"]


def make_sinks(run_dir: Path, names: Iterable[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> SinkGroup:
    """Build the named sinks from the registry (``jsonl`` is always included)."""
    from otplug.errors import OtplugError
    from otplug.plugins import get_registry

    registry = get_registry()
    options = dict(options or {})
    wanted = ["jsonl"] + [n for n in names if n != "jsonl"]
    sinks = []
    seen = set()
    try:
        for name in wanted:
            if name in seen:
                continue
            seen.add(name)
            factory = registry.get("sink", name, field="sinks").load()
            try:
                sinks.append(factory(Path(run_dir), **dict(options.get(name, {}))))
            except TypeError as exc:
                raise OtplugError(f"sink {name!r}: bad options {dict(options.get(name, {}))}: {exc}") from exc
    except BaseException:
        SinkGroup(sinks).close()  # the sinks built so far hold open files / writers
        raise
    return SinkGroup(sinks)
