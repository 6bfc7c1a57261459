"""A full disk at every write site (issue 21): one ``otplug: error:`` line naming the file and saying the disk is
full, exit code 2, no traceback; the checkpoint folder stays whole-or-absent.

Two kinds of fault:

* a **real full disk**: a small tmpfs mounted for the test (needs root and ``mount``; skipped otherwise), filled
  to the last byte at the moment a write site is reached (a hook wraps the function that writes, fills the disk,
  then calls it) -- the OS itself answers ENOSPC, and safetensors its Rust ``SafetensorError ... (os error 28)``;
* an **ENOSPC shim** (always run): the writer raises what a full disk raises (``OSError(ENOSPC)``, safetensors'
  error type, ``/dev/full``), for the machinery that maps it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from otplug.atomic import disk_full, safetensors_names_files, save_text, write_error, writing
from otplug.errors import DiskFullError, OtplugError

FULL = "the disk is full: cannot write"


# -- a real small disk ---------------------------------------------------------------------------------------------

def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A mounted 24 MiB tmpfs (a real file system that can fill up); unmounted afterwards."""
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(folder, "24m"):
        pytest.skip("needs root and `mount -t tmpfs` for a real full disk")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte (a ballast file)."""
    chunk = 1 << 20
    with open(folder / ".ballast", "ab", buffering=0) as fh:
        while chunk:
            try:
                fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2
    with pytest.raises(OSError):  # really full
        (folder / ".probe").write_bytes(b"x")


def filling(folder: Path, fn):
    """``fn`` that fills the disk first (once), then runs: the write it makes meets a full disk."""
    state = {"done": False}

    def wrapped(*args, **kwargs):
        if not state["done"]:
            state["done"] = True
            fill(folder)
        return fn(*args, **kwargs)

    return wrapped


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "otplug: error:" in x]
    assert len(lines) == 1, err
    return lines[0][lines[0].index("otplug: error:"):]


# -- training on a real full disk -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The tiny real/sim pair of tests/test_train.py (its own copy: fixtures are per module)."""
    pytest.importorskip("lerobot")
    from test_train import OT_CONFIG

    from otplug.lerobot.synthetic import make_dataset
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info

    root = tmp_path_factory.mktemp("pair")
    real = make_dataset(root / "real", repo_id="test/real", episode_lengths=(12, 14, 10), image_size=32, seed=1)
    sim = make_dataset(root / "sim", repo_id="test/sim", episode_lengths=(11, 13), image_size=32, seed=2)
    save_pair_info(compute_pair_info(sim, real, key="observation.state"), root / "pair_info.json")
    (root / "ot.json").write_text(json.dumps(OT_CONFIG))
    return root


@pytest.fixture
def sinks(otplug_registry):
    """Register sinks by name: sinks({"name": factory, ...})."""
    import otplug

    def register(factories):
        class P:
            @otplug.hookimpl
            def otplug_metric_sinks(self):
                return [otplug.MetricSink(name=n, factory=f, summary="test") for n, f in factories.items()]

        otplug_registry.register(P(), name="disk-full-sinks")

    return register


def _train_args(pair, out, steps=2, extra=()):
    from test_train import _args

    return ["train", *_args(pair, out, steps=steps, extra=extra)]


@pytest.mark.slow
def test_full_disk_while_lerobot_writes_the_weights_is_one_line_in_a_subprocess(pair, small_disk):
    """The issue's case: a real disk too small for model.safetensors (safetensors' Rust error) -- exit 2, one line
    naming the weights file, no traceback, no checkpoint folder half written or left behind."""
    out = small_disk / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "otplug", *_train_args(pair, out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert line.startswith("otplug: error: the disk is full: could not write checkpoint 000002"), line
    assert "pretrained_model/model.safetensors" in line and "No space left on device" in line, line
    assert "there is no earlier checkpoint" in line, line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []  # no partial folder, no 000002, no last
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["step"] > 0] == [1, 2]  # the record up to the failure is whole


def _site(name):
    """(what to wrap, file named in the message, extra train options) for each write site of a run."""
    import otplug.diagnostics as diagnostics
    import otplug.lerobot.train.loop as loop
    import otplug.lerobot.train.setup as setup
    from otplug.sinks.heatmap import PlanHeatmapSink
    from otplug.sinks.jsonl import JsonlSink

    no_ckpt = ["--save_checkpoint=false"]
    return {
        "run_info": (setup, "write_run_info", "run_info.json", no_ckpt),
        "metrics": (JsonlSink, "log", "metrics.jsonl", no_ckpt),
        "plans": (PlanHeatmapSink, "log_plan", "plans/plan_000001.png", no_ckpt),
        "embeddings": (diagnostics, "save_probe_embeddings", "embeddings/step_000000.npz", no_ckpt),
        "train_summary": (loop, "save_text", "train_summary.json", no_ckpt),
        "checkpoint": (loop, "save_checkpoint", "checkpoints/.000002.partial/pretrained_model/", []),
    }[name]


@pytest.mark.parametrize("site", ["run_info", "metrics", "plans", "embeddings", "train_summary", "checkpoint"])
def test_full_disk_at_every_write_site_of_a_run(pair, small_disk, site, monkeypatch, capsys):
    from otplug.cli import main

    owner, attr, named, extra = _site(site)
    monkeypatch.setattr(owner, attr, filling(small_disk, getattr(owner, attr)))
    out = small_disk / "run"
    assert main(_train_args(pair, out, extra=extra)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "the disk is full" in line and str(out / named) in line and "No space left on device" in line, line
    if (out / "checkpoints").is_dir():  # nothing of the checkpoint is left, not even its hidden partial folder
        assert [p.name for p in (out / "checkpoints").iterdir()] == []


# -- the other commands' files on a real full disk -----------------------------------------------------------------

def test_study_eval_and_report_files_on_a_real_full_disk(small_disk, monkeypatch):
    pytest.importorskip("matplotlib")
    from otplug.bench import study, study_outputs
    from otplug.bench.study_config import StudyConfig
    from otplug.bench.study_summary import summarize

    cfg = StudyConfig(methods=("cotrain",), seeds=1, eval_domains=("real",))
    rows = [{"method": "cotrain", "seed": 0, "domain": "real", "region": region, "episodes": 10, "successes": 5}
            for region in cfg.eval_regions]
    summary = summarize(rows, methods=cfg.methods, domains=cfg.eval_domains, regions=cfg.eval_regions, n_boot=10)
    fill(small_disk)
    calls = {
        "study.json": lambda: study._write_json_atomic(small_disk / "study.json", [{"a": 1}]),
        "study.md": lambda: study_outputs.write_table(small_disk, summary, cfg, {}),
        "study.png": lambda: study_outputs.write_plot(small_disk, summary["cells"], cfg),
        "eval.json": lambda: save_text(small_disk / "eval.json", "{}", "the evaluation result"),
    }
    for name, call in calls.items():
        with pytest.raises(DiskFullError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(FULL) and str(small_disk / name) in msg and "\n" not in msg, msg
        assert not (small_disk / name).exists()  # atomic writes leave nothing behind


def test_report_on_a_real_full_disk_is_one_line(small_disk, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from otplug.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "bc_loss": 1.0}) + "\n")
    fill(small_disk)
    assert main(["report", str(run), "--out", str(small_disk / "report.html")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"otplug: error: {FULL} the report {small_disk / 'report.html'}"), line


# -- the mapping (always run) ---------------------------------------------------------------------------------------

class SafetensorError(Exception):
    """What safetensors' Rust layer raises (matched by name, as the real class lives in a compiled module)."""


@pytest.mark.parametrize("exc, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), True),
    (SafetensorError("Error while deserializing header: HeaderTooLarge"), False),
    (OSError(errno.EACCES, "Permission denied"), False),
    (RuntimeError("something else"), False),
])
def test_disk_full_recognises_what_a_full_disk_raises(exc, full):
    assert disk_full(exc) is full
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = exc
    assert disk_full(wrapped) is full  # also when a library re-raised it


def test_writing_names_the_file_and_keeps_other_reasons(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(DiskFullError) as err, writing(target, "the thing"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(err.value) == (f"{FULL} the thing {target}: No space left on device; free some space, then run again")
    with pytest.raises(OtplugError, match=r"^cannot write the thing .*x.json: Permission denied$") as err2, \
            writing(target, "the thing"):
        raise OSError(errno.EACCES, "Permission denied")
    assert not isinstance(err2.value, DiskFullError)
    with pytest.raises(DiskFullError, match="x.json"), writing(target):
        raise SafetensorError("I/O error: No space left on device (os error 28)")
    with pytest.raises(ValueError), writing(target):  # not a write failure: unchanged
        raise ValueError("a bug")


def test_safetensors_error_gets_errno_and_file_name_on_a_real_full_disk(small_disk):
    torch = pytest.importorskip("torch")
    import safetensors.torch as st
    from safetensors.torch import save_file

    original = st.serialize_file
    fill(small_disk)
    target = small_disk / "w.safetensors"
    with pytest.raises(Exception) as raw:  # safetensors alone: a Rust error naming neither errno nor file
        save_file({"w": torch.zeros(4096)}, target)
    assert type(raw.value).__name__ == "SafetensorError" and "os error 28" in str(raw.value)
    assert disk_full(raw.value)
    with safetensors_names_files(), pytest.raises(OSError) as err:
        save_file({"w": torch.zeros(4096)}, target)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert st.serialize_file is original  # restored


def test_safetensors_error_gets_errno_and_file_name_shim(monkeypatch):
    torch = pytest.importorskip("torch")
    import safetensors.torch as st

    def full(tensors, filename, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(st, "serialize_file", full)
    with safetensors_names_files(), pytest.raises(OSError) as err:
        st.save_file({"w": torch.zeros(2)}, "/nowhere/w.safetensors")
    assert err.value.errno == errno.ENOSPC and err.value.filename == "/nowhere/w.safetensors"
    assert isinstance(err.value.__cause__, SafetensorError)
    assert st.serialize_file is full


def test_checkpoint_writer_maps_a_safetensors_full_disk(tmp_path):
    from otplug.lerobot.train.run_dir import write_checkpoint

    def weights_then_full(folder):
        (folder / "pretrained_model").mkdir(parents=True)
        (folder / "pretrained_model" / "config.json").write_text("{}")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    root = tmp_path / "checkpoints"
    with pytest.raises(DiskFullError) as err:
        write_checkpoint(root / "000004", weights_then_full)
    msg = str(err.value)
    assert msg.startswith("the disk is full: could not write checkpoint 000004 (No space left on device at "), msg
    assert "there is no earlier checkpoint" in msg and "\n" not in msg
    assert list(root.iterdir()) == []


def test_a_full_disk_in_any_sink_stops_the_run(tmp_path, sinks):
    """A non-required sink that fails for a full disk is not quietly disabled: the run could not save either."""
    from otplug.sinks import make_sinks

    class FullSink:
        def __init__(self, run_dir):
            pass

        def log(self, step, metrics):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "events.bin"))

    sinks({"full": FullSink})
    group = make_sinks(tmp_path, ["full"])
    with pytest.raises(DiskFullError, match=r"sink 'full'.* failed in log: the disk is full: cannot write "
                                            r".*events.bin: No space left on device"):
        group.log(1, {"bc_loss": 1.0})
    group.close()


def test_cli_last_resort_for_a_full_disk_without_a_message(monkeypatch, capsys):
    """A write site otplug does not wrap (a library writing for us) still ends in one line, exit 2."""
    import otplug.cli as cli

    def report_main(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/somewhere/file.bin")

    monkeypatch.setattr("otplug.report.main", report_main)
    assert cli.main(["report", "x"]) == 2
    err = capsys.readouterr().err
    assert err == (f"otplug: error: {FULL} /somewhere/file.bin: No space left on device; free some space, then run "
                   "again\n")
    monkeypatch.setattr("otplug.report.main", lambda argv: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.main(["report", "x"])


def test_write_error_wording():
    e = write_error("/x/y.json", OSError(errno.ENOSPC, "No space left on device"), "the run info")
    assert isinstance(e, DiskFullError) and e.path == "/x/y.json"
    assert str(e) == f"{FULL} the run info /x/y.json: No space left on device; free some space, then run again"

