"""Which video decoder lerobot uses: decided once per process, quietly, and said in one line.

lerobot's own probe (``get_safe_default_video_backend``, the default of ``--dataset.video_backend``) imports
torchcodec and, when torchcodec is installed but cannot load (no system FFmpeg), logs the whole load error --
about a hundred lines of tracebacks, on every command that opens a dataset, read by users as a crash. Here
torchcodec is imported once with logging and warnings silenced; ``pyav`` is used when it cannot load.
It is the default of ``--dataset.video_backend`` in ``otplug train``
(:class:`otplug.lerobot.train.config.OTDatasetConfig`; the option still wins); the choice is printed as one line
and stored in ``run_info.json``. (:func:`otplug.lerobot.datasets.open_dataset`, used by the other commands, passes
``pyav`` unless told otherwise, so lerobot's probe never runs there either.)
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import warnings

import attrs

__all__ = ["BackendChoice", "default_backend"]


@attrs.frozen
class BackendChoice:
    backend: str  # "torchcodec" or "pyav"
    reason: str  # why, for the one line and run_info.json


@functools.cache
def default_backend() -> BackendChoice:
    """torchcodec when it loads here, else pyav (with the reason); probed once per process, without output."""
    if importlib.util.find_spec("torchcodec") is None:
        return BackendChoice("pyav", "torchcodec is not installed")
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("torchcodec")
    except Exception as exc:  # noqa: BLE001 -- ImportError, OSError, RuntimeError: any failure means "cannot load"
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        first = first.removesuffix("Likely causes:").strip()
        if "libtorchcodec" in first:  # torchcodec's own list of causes starts with a missing or unsupported FFmpeg
            first += " (no supported FFmpeg installed?)"
        return BackendChoice("pyav", f"torchcodec is installed but cannot load here: {first[:160]}")
    finally:
        logging.disable(previous)
    return BackendChoice("torchcodec", "torchcodec loads here")
