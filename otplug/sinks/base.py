"""The sink protocol, and the group that fans metrics out to several sinks without letting one kill the run.

A sink is any object with ``log(step, metrics)``; ``log_plan(step, plan, labels)``, ``wants_plan(step)`` and
``close()`` are optional (docs/plugins.md). :class:`SinkGroup` calls each method only when the sink has it and
isolates every call: a sink that raises is reported in one :class:`SinkWarning` line (sink, plugin
distribution, method, error) and disabled for the rest of the run, and the other sinks go on. A *required* sink
(the built-in ``jsonl``, the record of the run) is never disabled: its error is raised after the other sinks
got the row. A full disk is raised the same way from any sink: the run cannot go on saving checkpoints either.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from otplug.atomic import disk_full, write_error
from otplug.errors import DiskFullError, OtplugError

__all__ = ["BoundSink", "Sink", "SinkGroup", "SinkWarning", "scalar_metrics"]


class SinkWarning(RuntimeWarning):
    """A metric sink raised; it is disabled for the rest of the run and the other sinks go on."""


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Keep numbers only (bools become 0/1); tensors and arrays with one element are converted."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):  # torch / numpy scalars and one-element tensors / arrays
            size = v.numel() if callable(getattr(v, "numel", None)) else getattr(v, "size", 1)
            if size != 1:
                continue
            v = v.item()
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, int | float):
            out[k] = v
    return out


class Sink:
    """Optional base class: every method but ``log`` may be left out (this class gives no-op defaults)."""

    def __init__(self, run_dir: Path, **options: Any) -> None:
        if options:
            raise OtplugError(f"{type(self).__name__} takes no options, got {sorted(options)}")
        self.run_dir = Path(run_dir)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:  # pragma: no cover - interface
        pass

    def log_plan(self, step: int, plan: Any, labels: Mapping[str, Any] | None = None) -> None:
        pass

    def wants_plan(self, step: int) -> bool:
        """Whether ``log_plan`` would do something at this step (lets the trainer skip the copy)."""
        return False

    def close(self) -> None:
        pass


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@attrs.define(eq=False)
class BoundSink:
    """A built sink with its registered ``name``, who provides it (``dist otplug 0.1.0``), whether its failure
    must stop the run (``required``) and, once it failed, why (``failed``)."""

    name: str
    sink: Any
    provider: str = ""
    required: bool = False
    failed: str | None = None

    @property
    def active(self) -> bool:
        return self.failed is None

    def label(self) -> str:
        return f"sink {self.name!r}" + (f" ({self.provider})" if self.provider else "")


def failure_line(label: str, method: str, exc: BaseException) -> str:
    """``sink 'x' (dist y 1.0) failed in log: ValueError: boom; disabled for the rest of the run``."""
    message = _one_line(str(exc)) or "(no message)"
    return f"{label} failed in {method}: {type(exc).__name__}: {message}; disabled for the rest of the run"


class SinkGroup:
    """Several sinks behind one sink interface; a failing sink is disabled, never fatal (unless required).

    ``SinkGroup(sinks)`` takes sink objects or :class:`BoundSink` entries (:func:`otplug.sinks.make_sinks`
    builds the latter, with names and providers). It is also a context manager that closes the sinks.
    """

    def __init__(self, sinks: Iterable[Any] = ()) -> None:
        self.entries: list[BoundSink] = []
        #: one line per sink that failed (in the order they failed), also issued as a SinkWarning
        self.failures: list[str] = []
        self._closed = False
        for s in sinks:
            self.add(s)

    def add(self, sink: Any) -> BoundSink:
        entry = sink if isinstance(sink, BoundSink) else BoundSink(type(sink).__name__, sink)
        self.entries.append(entry)
        return entry

    @property
    def sinks(self) -> list[Any]:
        """Every sink built, disabled ones included."""
        return [e.sink for e in self.entries]

    @property
    def disabled(self) -> dict[str, str]:
        """Name -> failure line of every sink disabled so far."""
        return {e.name: e.failed for e in self.entries if e.failed is not None}

    def __iter__(self) -> Iterator[Any]:
        return iter(self.sinks)

    def __len__(self) -> int:
        return len(self.entries)

    # -- fault isolation ---------------------------------------------------------------------------------
    def report(self, label: str, method: str, exc: BaseException, *, stacklevel: int = 5) -> str:
        """Record and warn about one failure (also used by ``make_sinks`` for a factory that raised)."""
        line = failure_line(label, method, exc)
        self.failures.append(line)
        warnings.warn(line, SinkWarning, stacklevel=stacklevel)
        return line

    def _call(self, entry: BoundSink, method: str, args: tuple, errors: list[BaseException]) -> Any:
        """``entry.sink.<method>(*args)``; on an exception: required sinks collect it in ``errors`` (raised by
        the caller after every sink had its turn), others are disabled with one warning."""
        try:
            return getattr(entry.sink, method)(*args)
        except Exception as exc:  # noqa: BLE001 -- isolate every sink
            if entry.required or disk_full(exc):  # a full disk stops the run: the next checkpoint could not be saved
                entry.failed = failure_line(entry.label(), method, exc)
                if not isinstance(exc, OtplugError):
                    exc = DiskFullError(f"{entry.label()} failed in {method}: "
                                        f"{write_error(getattr(exc, 'filename', None), exc)}")
                errors.append(exc)
            else:
                entry.failed = self.report(entry.label(), method, exc)
            return None

    @staticmethod
    def _raise_first(errors: list[BaseException]) -> None:
        if errors:
            raise errors[0]

    # -- the sink interface ------------------------------------------------------------------------------
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        errors: list[BaseException] = []
        for e in self.entries:
            if e.active:
                self._call(e, "log", (step, metrics), errors)
        self._raise_first(errors)

    def _wants(self, e: BoundSink, step: int, errors: list[BaseException]) -> bool:
        if not e.active or not callable(getattr(e.sink, "log_plan", None)):
            return False  # no log_plan: never gets a plan
        if not callable(getattr(e.sink, "wants_plan", None)):
            return True  # log_plan without wants_plan: every plan
        return bool(self._call(e, "wants_plan", (step,), errors))

    def wants_plan(self, step: int) -> bool:
        """Whether any active sink wants the plan of ``step`` (lets the trainer skip the device-to-host copy)."""
        errors: list[BaseException] = []
        wanted = [self._wants(e, step, errors) for e in self.entries]
        self._raise_first(errors)
        return any(wanted)

    def log_plan(self, step: int, plan: Any, labels: Mapping[str, Any] | None = None) -> None:
        errors: list[BaseException] = []
        for e in self.entries:
            if self._wants(e, step, errors) and e.active:
                self._call(e, "log_plan", (step, plan, dict(labels or {})), errors)
        self._raise_first(errors)

    def close(self) -> None:
        """Close every sink once (disabled ones too, quietly: they may hold files). Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for e in self.entries:
            if not callable(getattr(e.sink, "close", None)):
                continue
            if e.active:
                self._call(e, "close", (), errors)
            else:
                try:
                    e.sink.close()
                except Exception:  # noqa: BLE001,S110 -- already reported when it was disabled
                    pass
        self._raise_first(errors)

    def abort(self) -> None:
        """Close every sink, ignoring every error (when set-up fails half way)."""
        for e in self.entries:
            e.failed = e.failed or "aborted"
        try:
            self.close()
        except Exception:  # noqa: BLE001,S110
            pass

    def __enter__(self) -> SinkGroup:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()  # don't let a close error hide the exception that ended the block
