"""``metrics.jsonl``: one strict-JSON object per logged step, the record of the run (always on in training).

Exactness rules:

* every row is written with one ``write`` of the whole line (newline included) to an unbuffered file, so a
  killed process leaves at most one torn *last* line;
* a fresh run (``start_step == 0``) starts a new file; a resumed run (``start_step = N > 0``, the checkpoint's
  step) first rewrites the file atomically (temporary file + ``os.replace``) keeping only complete rows with
  ``step <= N`` -- each step once, the last row written for it -- so after the resume every step appears once;
* NaN and +-inf are written as ``null`` and their keys listed in the row's ``nonfinite`` list: every line is
  strict JSON (RFC 8259), readable by any JSON parser, not only Python's;
* an OS error (disk full, read-only folder) is an :class:`~otplug.errors.OtplugError` naming the file (a
  :class:`~otplug.errors.DiskFullError` saying so for a full disk) -- never a silently lost record.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otplug.atomic import write_error
from otplug.errors import OtplugError
from otplug.sinks.base import Sink, scalar_metrics

__all__ = ["JsonlSink", "format_row", "read_jsonl", "truncate_jsonl"]


def format_row(step: int, metrics: Mapping[str, Any]) -> str:
    """One line (without the newline): ``{"step": N, **numbers}``; NaN/inf become ``null``, their keys listed in
    ``"nonfinite"``. Non-numeric values are left out; a metric named ``step`` or ``nonfinite`` cannot override
    the row's own field."""
    row: dict[str, Any] = {"step": int(step)}
    nonfinite: list[str] = []
    for k, v in scalar_metrics(metrics).items():
        if k in ("step", "nonfinite"):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            row[k] = None
            nonfinite.append(k)
        else:
            row[k] = v
    if nonfinite:
        row["nonfinite"] = nonfinite
    return json.dumps(row, allow_nan=False)


def _os_error(path: Path, exc: OSError) -> OtplugError:
    return write_error(path, exc)


def truncate_jsonl(path: Path, last_step: int) -> tuple[int, int]:
    """Keep the complete rows of ``path`` with ``step <= last_step`` (one per step: the last one written), in
    file order; atomically (temporary file + ``os.replace``). A torn last line (a killed writer) and rows
    after ``last_step`` are dropped.

    Returns ``(kept, dropped)``. A missing file is left missing. Lines before the last one that are not JSON
    objects with an integer ``step`` are dropped with a warning (they are not rows).
    """
    path = Path(path)
    if not path.exists():
        return 0, 0
    data = path.read_bytes()
    lines = [line for line in data.split(b"\n") if line.strip()]
    last_at: dict[int, int] = {}
    corrupt = 0
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            corrupt += i < len(lines) - 1  # the last line may be torn by a kill: expected, no warning
            continue
        if step <= last_step:
            last_at[step] = i
    keep = sorted(last_at.values())
    if corrupt:
        warnings.warn(f"{path}: dropped {corrupt} line(s) that are not metric rows while resuming at step "
                      f"{last_step}", RuntimeWarning, stacklevel=3)
    out = b"".join(lines[i] + b"\n" for i in keep)
    if out != data:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(out)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # mkstemp makes it 0600; keep the file's mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return len(keep), len(lines) - len(keep)


class JsonlSink(Sink):
    """Writes ``{"step": ..., **metrics}`` rows to ``<run_dir>/<filename>``, one unbuffered write per row.

    ``start_step``: 0 starts a fresh file; ``N > 0`` (a run resumed from the checkpoint of step N) keeps the
    file's rows up to step N and appends after them (see the module docstring).
    """

    def __init__(self, run_dir: Path, filename: str = "metrics.jsonl", start_step: int = 0) -> None:
        super().__init__(run_dir)
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise OtplugError(f"jsonl sink: start_step must be an integer >= 0, got {start_step!r}")
        self.path = self.run_dir / filename
        self.start_step = start_step
        self._broken = False
        self._fh: Any = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if start_step > 0:
                truncate_jsonl(self.path, start_step)
            self._fh = open(self.path, "ab" if start_step > 0 else "wb", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise _os_error(self.path, exc) from exc

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        data = (format_row(step, metrics) + "\n").encode("utf-8")
        try:
            view = memoryview(data)
            while view:  # a raw file may write less than asked (rare for regular files): finish the line
                n = self._fh.write(view)
                view = view[n if n is not None else len(view):]
            self._fh.flush()
        except OSError as exc:
            self._broken = True
            raise _os_error(self.path, exc) from exc

    def close(self) -> None:
        if self._fh is None or self._fh.closed:
            return
        try:
            self._fh.close()
        except OSError as exc:
            if not self._broken:  # already reported by the write that failed
                raise _os_error(self.path, exc) from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a ``metrics.jsonl`` file (a torn last line, from a killed run, is skipped)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    tail = lines.pop()
    rows = [json.loads(line) for line in lines if line.strip()]
    if tail.strip():
        try:
            rows.append(json.loads(tail))
        except ValueError:
            pass
    return rows
