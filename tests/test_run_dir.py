"""The run folder: exclusive lock, stale-lock takeover, writability, complete-checkpoint fallback on resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from otplug.errors import OtplugError
from otplug.lerobot.train.run_dir import LOCK_NAME, RunLock, check_writable, complete_checkpoint


def test_second_run_into_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "run"
    with RunLock(out, fresh=True):
        assert (out / LOCK_NAME).is_file()
        # a fresh run into a folder that another run created
        (out / "metrics.jsonl").write_text("")
        with pytest.raises(OtplugError, match="already exists"):
            RunLock(out, fresh=True).acquire()
        # a resume while the run is alive
        with pytest.raises(OtplugError, match=f"in use by another otplug run \\(PID {os.getpid()}\\)"):
            RunLock(out, fresh=False).acquire()
    assert not (out / LOCK_NAME).exists()
    RunLock(out, fresh=False).acquire().release()  # free again


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="ended without cleaning up"):
        lock = RunLock(out, fresh=False).acquire()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(OtplugError, match="locked by PID 1 on host elsewhere; if no run uses it any more, delete"):
        RunLock(out, fresh=False).acquire()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_message(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OtplugError, match="is not writable"):
        check_writable(ro / "run")


def _ckpt(root, step, *, broken=None):
    d = root / "checkpoints" / f"{step:06d}"
    (d / "pretrained_model").mkdir(parents=True)
    (d / "training_state").mkdir()
    for name in ("config.json", "train_config.json"):
        (d / "pretrained_model" / name).write_text("{}")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64)}, str(d / "pretrained_model" / "model.safetensors"))
    if broken == "truncated":
        f = d / "pretrained_model" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-40])
    if broken == "json":
        (d / "pretrained_model" / "train_config.json").write_text('{"a": ')
    return d


def test_resume_falls_back_to_the_previous_complete_checkpoint(tmp_path):
    pytest.importorskip("safetensors")
    _ckpt(tmp_path, 2)
    _ckpt(tmp_path, 4, broken="truncated")
    (tmp_path / "checkpoints" / "last").symlink_to("000004")
    with pytest.warns(UserWarning, match="checkpoint 000004 is incomplete .*resuming from 000002 instead"):
        assert complete_checkpoint(tmp_path).name == "000002"
    _ckpt(tmp_path, 6, broken="json")
    (tmp_path / "checkpoints" / "last").unlink()
    (tmp_path / "checkpoints" / "last").symlink_to("000006")
    with pytest.warns(UserWarning, match="train_config.json is unreadable"):
        assert complete_checkpoint(tmp_path).name == "000002"
    with pytest.raises(OtplugError, match="no checkpoint in"):
        complete_checkpoint(tmp_path / "nothing")


def test_checkpoint_is_written_whole_or_not_at_all(tmp_path):
    """A full disk mid-save: one message naming the file, no partial folder left, earlier checkpoints intact; the
    next save of the same step starts from a clean slate even after a kill left a partial folder."""
    import errno

    from otplug.lerobot.train.run_dir import write_checkpoint

    root = tmp_path / "checkpoints"

    def ok(folder):
        (folder / "pretrained_model").mkdir(parents=True)
        (folder / "pretrained_model" / "model.safetensors").write_bytes(b"weights")

    write_checkpoint(root / "000003", ok)

    def disk_full(folder):
        ok(folder)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "training_state" / "optimizer_state.pt"))

    with pytest.raises(OtplugError) as err:
        write_checkpoint(root / "000006", disk_full)
    msg = str(err.value)
    assert "000006" in msg and "No space left on device" in msg and "optimizer_state.pt" in msg
    assert "['000003'] are intact" in msg and "\n" not in msg
    assert sorted(p.name for p in root.iterdir()) == ["000003"]
    (root / ".000006.partial" / "junk").mkdir(parents=True)  # what a kill mid-save leaves behind
    write_checkpoint(root / "000006", ok)
    assert sorted(p.name for p in root.iterdir()) == ["000003", "000006"]
    assert not (root / "000006" / "junk").exists()
