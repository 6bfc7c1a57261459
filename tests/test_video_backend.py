"""A quiet start (issue 21): the video backend is decided once, without lerobot's probe (which logs ~100 lines of
torchcodec load tracebacks when FFmpeg is missing), said in one line and stored in run_info.json;
``--dataset.video_backend`` still wins."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otplug.lerobot.video_backend import default_backend

pytest.importorskip("lerobot")
from test_train import _args, pair  # noqa: E402,F401  (pair: the tiny real/sim datasets fixture)


def _without_backend(args):
    return [a for a in args if not a.startswith("--dataset.video_backend")]


def _backend_lines(stdout):
    return [x for x in stdout.splitlines() if x.startswith("otplug train: video backend ")]


def test_first_run_log_has_no_traceback_and_one_backend_line(pair, tmp_path):  # noqa: F811
    """A subprocess run as a user starts it (no --dataset.video_backend): no traceback text anywhere, one line
    naming the backend, the same in run_info.json."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "otplug", "train", *_without_backend(_args(pair, out, steps=1))],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    expected = default_backend()
    lines = _backend_lines(done.stdout)
    assert "Traceback" not in log and "torchcodec" not in log.replace(lines[0], ""), log[:3000]
    assert lines == [f"otplug train: video backend {expected.backend} ({expected.reason}; --dataset.video_backend "
                     "chooses another)"], done.stdout
    info = json.loads((out / "run_info.json").read_text())["video_backend"]
    assert info == {"used": expected.backend, "default_here": expected.backend, "reason": expected.reason}
    saved = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "train_config.json").read_text())
    assert saved["dataset"]["video_backend"] == expected.backend


def test_the_option_wins_and_lerobots_probe_is_never_called(pair, tmp_path, monkeypatch, capsys):  # noqa: F811
    """--dataset.video_backend is used as given (and said so); torchcodec is imported at most once, by otplug's
    quiet probe -- lerobot's probe (which would import it again and log the failure) does not run."""
    from otplug.lerobot.train import main

    default_backend.cache_clear()
    imports = []
    real_import = importlib.import_module

    def spy(name, *a, **k):
        if name == "torchcodec":
            imports.append(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", spy)
    out = tmp_path / "given"
    assert main(_args(pair, out, steps=1)) == 0  # _args gives --dataset.video_backend=pyav
    assert _backend_lines(capsys.readouterr().out) == ["otplug train: video backend pyav (from "
                                                        "--dataset.video_backend)"]
    assert json.loads((out / "run_info.json").read_text())["video_backend"]["used"] == "pyav"
    out2 = tmp_path / "default"
    assert main(_without_backend(_args(pair, out2, steps=1))) == 0
    assert len(imports) <= 1, imports
    # resuming keeps the run's own choice (from its saved config)
    assert main(["--resume", "--output-dir", str(out2), "--steps=2"]) == 0
    assert _backend_lines(capsys.readouterr().out)[-1].startswith(
        f"otplug train: video backend {default_backend().backend} (from the config file")
    assert len(imports) <= 1, imports


def test_a_torchcodec_that_cannot_load_means_pyav_quietly(tmp_path, monkeypatch, capfd):
    """torchcodec installed but failing to load (as without FFmpeg: a long RuntimeError) -> pyav, nothing printed."""
    pkg = tmp_path / "fake" / "torchcodec"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import logging, warnings
        logging.getLogger("torchcodec").warning("loading libtorchcodec failed")
        warnings.warn("torchcodec: no FFmpeg")
        raise RuntimeError("Could not load libtorchcodec. Likely causes:\\n" + "\\n".join(["  Traceback ..."] * 90))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.delitem(sys.modules, "torchcodec", raising=False)
    default_backend.cache_clear()
    try:
        choice = default_backend()
        assert choice.backend == "pyav"
        assert choice.reason == ("torchcodec is installed but cannot load here: Could not load libtorchcodec. "
                                 "(no supported FFmpeg installed?)")
        assert default_backend() is choice  # decided once
        captured = capfd.readouterr()
        assert captured.out == "" and captured.err == ""
    finally:
        default_backend.cache_clear()
        sys.modules.pop("torchcodec", None)


def test_no_torchcodec_means_pyav(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    default_backend.cache_clear()
    try:
        assert default_backend().backend == "pyav" and default_backend().reason == "torchcodec is not installed"
    finally:
        default_backend.cache_clear()
