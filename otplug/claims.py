"""Exclusive claims on shared folders and files: a study folder by one study, a study's cell by one training job.

A :class:`Claim` is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on every local and NFS-v3+ file
system) holding the holder's PID, host, process start time, since when, and its command. A second claimant fails at
once with one line naming the holder. A claim left by a process that no longer exists on this host (a crash, ``kill
-9``) is taken over with a warning; one from another host cannot be checked from here and is reported with the file
to delete once that process is gone. Released when the holder ends, however it ends (context manager), except on
``kill -9``, which the next claimant detects as above.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from otplug.errors import OtplugError

__all__ = ["Claim", "ClaimHeld", "describe", "holder_of", "process_alive"]


class ClaimHeld(OtplugError):
    """Someone else holds the claim (the message names them)."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): tells a live holder from a
    new process that reuses its PID. ``None`` where /proc does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, given its recorded start time, is still that process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holder_of(path: Path) -> dict[str, Any] | None:
    """The live holder of a claim file (its record), or ``None`` when there is no claim or its holder is gone (a
    process of this host that no longer runs). A holder on another host counts as live: it cannot be checked."""
    path = Path(path)
    if not path.exists():
        return None
    holder = _read(path)
    pid, host = holder.get("pid"), holder.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid, holder.get("start")):
        return None
    return holder


def describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    cmd = holder.get("command")
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"
            + (f" ({cmd[:120]})" if isinstance(cmd, str) and cmd else ""))


class Claim:
    """``Claim(path, what).acquire()``: hold ``path`` (``what`` names the thing claimed in messages); ``hint`` ends
    the message a second claimant gets."""

    def __init__(self, path: Path, what: str, hint: str = "wait for it to finish or stop it") -> None:
        self.path = Path(path)
        self.what = what
        self.hint = hint
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> Claim:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
              "since": time.time(), "command": " ".join(sys.argv)}
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale()
                continue
            except OSError as exc:
                raise OtplugError(f"cannot create the claim file {self.path} for {self.what}: "
                                  f"{exc.strerror or exc}") from exc
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(json.dumps(me))
            except OSError as exc:
                self.path.unlink(missing_ok=True)  # an empty claim would read as another holder's
                raise OtplugError(f"cannot write the claim file {self.path}: {exc.strerror or exc}") from exc
            self._held = True
            return self
        raise ClaimHeld(f"could not claim {self.what}: another process is claiming it at the same moment")

    def _take_over_stale(self) -> None:
        holder = _read(self.path)
        if not holder:  # being written this instant, or emptied by hand: give the writer a moment
            time.sleep(0.2)
            holder = _read(self.path)
        live = holder_of(self.path) if holder else None
        if holder and live is None:
            warnings.warn(f"{self.path}: the process that held {self.what} ({describe(holder)}) ended without "
                          "releasing it (a crash or a kill); taking it over", stacklevel=4)
            self.path.unlink(missing_ok=True)
            return
        if not holder:
            raise ClaimHeld(f"{self.what} is claimed by an unreadable claim file {self.path}; delete it if no otplug "
                            "process uses the folder")
        other_host = holder.get("host") != socket.gethostname()
        raise ClaimHeld(f"{self.what} is in use by {describe(holder)}; {self.hint}"
                        + (f" (if it no longer runs there, delete {self.path})" if other_host else ""))

    def release(self) -> None:
        if self._held:
            if _read(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> Claim:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
