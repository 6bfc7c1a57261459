"""Metric sinks: where training metrics and transport plans go.

A sink is built as ``factory(run_dir: Path, **options)`` and has ``log(step, metrics)``; ``log_plan(step, plan,
labels)``, ``wants_plan(step)`` and ``close()`` are optional. They are registered as plugins (``otplug
list-sinks``); :func:`make_sinks` builds them by name into a fault-isolating :class:`SinkGroup`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from otplug.sinks.base import BoundSink, Sink, SinkGroup, SinkWarning, scalar_metrics

__all__ = ["REQUIRED_SINK", "BoundSink", "Sink", "SinkGroup", "SinkWarning", "make_sinks", "scalar_metrics"]

#: the sink every group has, first, and whose failure stops the run: ``metrics.jsonl`` is the record of the run
REQUIRED_SINK = "jsonl"


def _provider(provided: Any) -> str:
    if provided.dist:
        return f"dist {provided.dist} {provided.version or '?'}"
    return f"plugin {provided.plugin!r}"


def _signature(factory: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins / C callables have none: skip the up-front checks
        return None


def _takes(sig: inspect.Signature, name: str) -> bool:
    p = sig.parameters.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _check_options(name: str, sig: inspect.Signature | None, run_dir: Path, kwargs: dict[str, Any],
                   given: Mapping[str, Any]) -> None:
    from otplug.errors import OtplugError

    if sig is None:
        return
    try:
        sig.bind(run_dir, **kwargs)
    except TypeError as exc:
        params = list(sig.parameters.values())[1:]
        takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise OtplugError(f"sink {name!r}: bad options {dict(given)}: {exc} (it takes: "
                          f"{', '.join(takes) or 'no options'})") from exc


def make_sinks(
    run_dir: Path,
    names: Iterable[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    start_step: int = 0,
) -> SinkGroup:
    """Build the named sinks from the registry into a :class:`SinkGroup` (``jsonl`` always, first).

    ``options``: sink name -> keyword options for its factory. ``start_step``: 0 for a fresh run; ``N > 0`` for
    a run resumed from the checkpoint of step N -- ``metrics.jsonl`` then keeps its rows up to step N (see
    :class:`~otplug.sinks.jsonl.JsonlSink`), and every factory with a ``start_step`` parameter gets it.

    Raised here, before any step runs: an unknown name, options a factory does not take, an
    :class:`~otplug.errors.OtplugError` raised by a factory (the sink's own "fix your set-up" message, e.g. a
    missing package), and any failure of the ``jsonl`` sink. Any other exception from a factory (or from
    importing it) disables that sink with one :class:`SinkWarning` line and the others are built (fatal with
    ``OTPLUG_STRICT_PLUGINS=1``).
    """
    from otplug.errors import OtplugError, PluginLoadError
    from otplug.plugins import get_registry

    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise OtplugError(f"make_sinks: start_step must be an integer >= 0 (the checkpoint's step), got {start_step!r}")
    if isinstance(names, str):
        names = [names]
    registry = get_registry()
    options = {k: dict(v) for k, v in (options or {}).items()}
    wanted = list(dict.fromkeys([REQUIRED_SINK, *names]))
    # every name is checked before any sink opens a file
    provided = [(name, registry.get("sink", name, field="sinks")) for name in wanted]
    run_dir = Path(run_dir)
    group = SinkGroup()
    try:
        for name, prov in provided:
            required = name == REQUIRED_SINK
            label = f"sink {name!r} ({_provider(prov)})"
            try:
                factory = prov.load()
            except PluginLoadError as exc:
                if required or registry.strict:
                    raise
                group.report(label, "start-up", exc, stacklevel=3)
                continue
            given = options.get(name, {})
            kwargs = dict(given)
            sig = _signature(factory)
            if sig is not None and _takes(sig, "start_step"):
                kwargs["start_step"] = start_step
            _check_options(name, sig, run_dir, kwargs, given)
            try:
                sink = factory(run_dir, **kwargs)
            except OtplugError:
                raise
            except Exception as exc:  # noqa: BLE001 -- a broken third-party sink must not stop training
                if required or registry.strict:
                    raise
                group.report(label, "start-up", exc, stacklevel=3)
                continue
            group.add(BoundSink(name, sink, _provider(prov), required=required))
    except BaseException:
        group.abort()  # the sinks built so far hold open files / writers
        raise
    return group
