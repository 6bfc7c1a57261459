"""The run folder: claimed exclusively by one run, checked writable before any data is loaded, and checkpoints
checked complete before a resume uses them.

* :class:`RunLock` — ``<output_dir>/.otplug.lock`` created with ``O_CREAT | O_EXCL`` (atomic) holding the PID and
  host; a second run into the same folder fails at once naming the holder. A lock left by a process that no longer
  exists (a crash, ``kill -9``) on this host is taken over with a warning; a lock from another host is reported
  with the command to clear it. The lock is removed when the run ends, however it ends.
* :func:`write_checkpoint` — a checkpoint is written into a hidden ``.<step>.partial`` sibling and renamed into
  place when complete, so a kill or a full disk mid-save never leaves a numbered checkpoint half written; a
  write error is one message naming the file, and the previous checkpoints stay as they were.
* :func:`complete_checkpoint` — the newest checkpoint whose files are all there and readable (``last`` first);
  an incomplete one (from a version that wrote in place, or files removed by hand) is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otplug.atomic import disk_full, safetensors_names_files, write_error, writing
from otplug.claims import process_alive
from otplug.errors import DiskFullError, OtplugError

__all__ = ["LOCK_NAME", "RunLock", "check_writable", "checkpoint_problem", "complete_checkpoint", "write_checkpoint"]

LOCK_NAME = ".otplug.lock"


def check_writable(folder: Path) -> None:
    """``folder`` (created if needed) accepts a file; one message naming it otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".otplug-write-test.{os.getpid()}"
        with open(probe, "w") as fh:
            fh.write("ok")
        probe.unlink()
    except OSError as exc:
        if disk_full(exc):
            raise write_error(folder, exc, "the output folder") from exc
        raise OtplugError(f"output folder {folder} is not writable: {exc.strerror or exc}") from exc


class RunLock:
    """An exclusive claim on a run folder (see the module docstring). Use as a context manager."""

    def __init__(self, folder: Path, *, fresh: bool) -> None:
        self.folder = Path(folder)
        self.fresh = fresh
        self.path = self.folder / LOCK_NAME
        self._held = False

    def acquire(self) -> RunLock:
        if self.fresh:
            try:
                self.folder.mkdir(parents=True)
            except FileExistsError:
                if any(p.name != LOCK_NAME for p in self.folder.iterdir()):
                    raise OtplugError(f"output folder {self.folder} already exists (another run, or an earlier "
                                      "one); pick a new --output-dir, or add --resume to continue it") from None
            except OSError as exc:
                raise OtplugError(f"cannot create the output folder {self.folder}: {exc.strerror or exc}") from exc
        check_writable(self.folder)
        info = {"pid": os.getpid(), "host": socket.gethostname()}
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale()
                continue
            except OSError as exc:
                raise OtplugError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from exc
            try:
                with writing(self.path, "the lock file"), os.fdopen(fd, "w") as fh:
                    fh.write(json.dumps(info))
            except OtplugError:
                self.path.unlink(missing_ok=True)  # an empty lock would read as another run's
                raise
            self._held = True
            return self
        raise OtplugError(f"could not lock {self.folder}: another run is starting in it")

    def _take_over_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
            warnings.warn(f"{self.path}: the run that held this folder (PID {pid}) ended without cleaning up "
                          "(a crash or a kill); taking it over", stacklevel=3)
            self.path.unlink(missing_ok=True)
            return
        if host != socket.gethostname() and host is not None:
            raise OtplugError(f"{self.folder} is locked by PID {pid} on host {host}; if no run uses it any more, "
                              f"delete {self.path}")
        raise OtplugError(f"{self.folder} is in use by another otplug run (PID {pid}); wait for it to finish or "
                          "pick another --output-dir")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints

_REQUIRED = ("pretrained_model/config.json", "pretrained_model/model.safetensors",
             "pretrained_model/train_config.json")


def _problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from, or None when it is complete."""
    for rel in _REQUIRED:
        if not (ckpt / rel).is_file():
            return f"{rel} is missing"
    for f in sorted(ckpt.rglob("*.json")):
        try:
            json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            return f"{f.relative_to(ckpt)} is unreadable ({type(exc).__name__})"
    try:
        from safetensors import safe_open

        for f in sorted(ckpt.rglob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    st.get_slice(key)  # parses the header and checks the data offsets against the file size
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        return f"a weights file is unreadable ({type(exc).__name__}: {str(exc)[:80]})"
    training_state = ckpt / "training_state"
    if not training_state.is_dir():
        return "training_state/ is missing"
    return None


def _newest_file(folder: Path) -> Path | None:
    """The file last modified under ``folder``: the one being written when a write without a file name (a plain
    ``write()`` on a full disk) failed."""
    try:
        files = [(f.stat().st_mtime_ns, f) for f in folder.rglob("*") if f.is_file()]
    except OSError:
        return None
    return max(files)[1] if files else None


def write_checkpoint(ckpt: Path, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` into ``.<name>.partial`` beside ``ckpt``, then rename it to ``ckpt`` (atomic on one file
    system). A leftover partial folder of the same step (an earlier kill) is removed first; on an OS error (a full
    disk also when safetensors reports it) the partial folder is removed and one :class:`OtplugError` names the file
    and says what is intact (:class:`DiskFullError` when the disk is full)."""
    partial = ckpt.parent / f".{ckpt.name}.partial"
    try:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        with safetensors_names_files():
            write(partial)
        if ckpt.exists():  # the same step written before (an in-place writer's leftover): replace it whole
            shutil.rmtree(ckpt)
        os.replace(partial, ckpt)
    except Exception as exc:
        full = disk_full(exc)
        os_error = exc if isinstance(exc, OSError) else exc.__cause__  # writing() keeps the OSError as the cause
        where = getattr(exc, "filename", None) or getattr(exc, "path", None) or _newest_file(partial) or partial
        shutil.rmtree(partial, ignore_errors=True)
        if not (full or isinstance(os_error, OSError)):
            raise
        exc = os_error if isinstance(os_error, OSError) else exc
        kept = sorted(p.name for p in ckpt.parent.iterdir() if p.name.isdigit()) if ckpt.parent.is_dir() else []
        reason = getattr(exc, "strerror", None) or ("No space left on device" if full else str(exc))
        earlier = f"the earlier checkpoints {kept} are intact" if kept else "there is no earlier checkpoint"
        message = (f"could not write checkpoint {ckpt.name} ({reason} at {where}); nothing of it was kept; {earlier} "
                   "(free space or fix the folder, then --resume)")
        if full:
            raise DiskFullError("the disk is full: " + message, path=str(where)) from exc
        raise OtplugError(message) from exc
    return ckpt


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why the checkpoint folder ``ckpt`` is incomplete (a missing or unreadable file), or None when it is whole."""
    if not Path(ckpt).exists():
        return f"{ckpt} does not exist"
    return _problem(Path(ckpt))


def complete_checkpoint(output_dir: Path) -> Path:
    """The checkpoint a resume should use: ``checkpoints/last`` when complete, else the newest complete numbered
    checkpoint (with a warning). :class:`OtplugError` when there is none."""
    root = Path(output_dir) / "checkpoints"
    last = root / "last"
    candidates = [last] if last.exists() else []
    numbered = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name),
                      reverse=True) if root.is_dir() else []
    candidates += [p for p in numbered if not (last.exists() and p.resolve() == last.resolve())]
    if not candidates:
        raise OtplugError(f"--resume: no checkpoint in {output_dir} (expected {last}/pretrained_model/"
                          "train_config.json); train first, or point --output-dir at the run to continue")
    skipped = []
    for ckpt in candidates:
        why = _problem(ckpt)
        if why is None:
            if skipped:
                warnings.warn("--resume: " + "; ".join(skipped) + f"; resuming from {ckpt.resolve().name} instead",
                              stacklevel=2)
            return ckpt
        skipped.append(f"checkpoint {ckpt.resolve().name} is incomplete ({why})")
    raise OtplugError(f"--resume: no complete checkpoint in {root} (" + "; ".join(skipped) + "): there is nothing "
                      f"to resume; start the run again without --resume (remove {output_dir} or pick another "
                      "--output_dir)")
