"""Writing files: atomically, and with one message naming the file when the write fails.

* :func:`write_text_atomic` -- a temporary sibling renamed into place, so a reader (or a resumed run) sees the old
  file or the new one, never half of one; the temporary file is removed when writing fails. ``OSError`` reaches
  the caller.
* :func:`writing` -- the one place that turns a failed write into an :class:`~otplug.errors.OtplugError` naming
  the file (the CLI prints it as one ``otplug: error:`` line, exit code 2). A full disk (``ENOSPC``, ``EDQUOT``,
  also when it arrives as safetensors' Rust ``SafetensorError ... (os error 28)``) becomes a
  :class:`~otplug.errors.DiskFullError` that says the disk is full; any other ``OSError`` keeps its reason.
* :func:`save_text`, :func:`save_file` -- both: an atomic write (text, or any writer such as ``fig.savefig``)
  whose failure names the file.
* :func:`safetensors_names_files` -- while active, a ``SafetensorError`` for a full disk is raised as
  ``OSError(ENOSPC, ..., filename)``: safetensors' own error names neither the errno nor the file (lerobot writes
  the weights, the optimizer and RNG state and the processors' state through it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from otplug.errors import DiskFullError, OtplugError

__all__ = ["disk_full", "safetensors_names_files", "save_file", "save_text", "write_error", "write_text_atomic",
           "writing"]

#: errno values that mean "no room left": no space on the device, or the user's quota is used up
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk is full: an ``OSError`` with errno
    ``ENOSPC``/``EDQUOT``, or a Rust error (safetensors) whose message carries ``(os error 28)``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if type(exc).__name__ == "SafetensorError":
            m = _RUST_OS_ERROR.search(str(exc))
            if m and int(m.group(1)) in DISK_FULL_ERRNOS:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_error(path: str | os.PathLike | None, exc: BaseException, what: str = "") -> OtplugError:
    """One-line error for a failed write of ``path`` (``what`` says what the file is, e.g. ``the run summary``)."""
    name = f"{what} {path}" if what and path else (str(path) if path else (what or "a file"))
    reason = getattr(exc, "strerror", None)
    if disk_full(exc):
        return DiskFullError(f"the disk is full: cannot write {name}: {reason or os.strerror(errno.ENOSPC)}; free "
                             "some space, then run again", path=None if path is None else str(path))
    return OtplugError(f"cannot write {name}: {reason or one_line(exc)}")


def one_line(exc: BaseException, limit: int = 200) -> str:
    flat = " ".join(str(exc).split()) or type(exc).__name__
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "", *, exact: bool = False) -> Iterator[None]:
    """Around code that writes ``path``: an ``OSError`` (or a full disk reported in another way) becomes one
    :class:`OtplugError` naming the file (the one the ``OSError`` names, if any, unless ``exact``: then ``path``,
    e.g. for the temporary sibling of an atomic write); an ``OtplugError`` passes unchanged."""
    try:
        yield
    except OtplugError:
        raise
    except OSError as exc:
        raise write_error((None if exact else getattr(exc, "filename", None)) or path, exc, what) from exc
    except Exception as exc:
        if disk_full(exc):
            raise write_error(path, exc, what) from exc
        raise


def save_text(path: str | os.PathLike, text: str, what: str = "") -> Path:
    """:func:`write_text_atomic` under :func:`writing`: the file is whole or absent, a failure is one message."""
    with writing(path, what, exact=True):
        return write_text_atomic(path, text)


def save_file(path: str | os.PathLike, write: Callable[[Path], object], what: str = "") -> Path:
    """``write(tmp)`` to a temporary sibling with the same suffix (matplotlib and PIL pick the format from it),
    renamed to ``path`` when complete, under :func:`writing`: a picture is whole or absent, never a truncated file
    left by a full disk."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    with writing(path, what, exact=True):
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def safetensors_names_files() -> Iterator[None]:
    """While active, safetensors writes that fail for a full disk raise ``OSError(ENOSPC, ..., filename)`` (with
    the file), so that :func:`writing` and the checkpoint writer can name it. Other errors are unchanged.

    It wraps ``safetensors.torch.serialize_file``, which every ``save_file``/``save_model`` of safetensors' torch
    API calls; the original is restored on exit. Without safetensors it does nothing."""
    try:
        import safetensors.torch as st
    except ImportError:
        yield
        return
    original = getattr(st, "serialize_file", None)
    if original is None:  # pragma: no cover - another safetensors layout: the CLI's last resort still says it
        yield
        return

    def serialize_file(tensors, filename, *args, **kwargs):
        try:
            return original(tensors, filename, *args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, OSError) and disk_full(exc):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename)) from exc
            raise

    st.serialize_file = serialize_file
    try:
        yield
    finally:
        st.serialize_file = original
