"""Issue #30: a study folder is one study's, its answer is one split's, and a rerun can tell what differed. Real
processes where the promise is about processes: two studies on one folder, two grid jobs on one cell, a study resumed
while a training of an earlier invocation still runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otplug.bench.launch import Cell, CellFailed, LaunchConfig, LaunchError, run_cells, train_cell
from otplug.bench.study_config import StudyError
from otplug.bench.study_provenance import check_one_study, environments
from otplug.claims import Claim, ClaimHeld, holder_of

pytest.importorskip("lerobot")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
#: a tiny study in a child process (run_study's API: the CLI has no knob for the data sizes)
TINY_STUDY = """
import sys
from otplug.bench.study import run_study
from otplug.bench.study_config import StudyConfig
cfg = StudyConfig(methods=("target-only",), seeds=1, steps=int(sys.argv[2]), eval_episodes=2, real_episodes=3,
                  sim_episodes=4, batch_size=4, ot_batch_size=2, heldout_episodes=1, eval_domains=("real",))
run_study(sys.argv[1], cfg, quiet=True)
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else "the process ended"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _one_line_error(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip() and not x.startswith("Svt[")]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [x for x in lines if x.startswith("otplug: error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# claims

def test_claim_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    path = tmp_path / "x.claim"
    with Claim(path, "the thing"):
        assert holder_of(path)["pid"] == os.getpid()
        with pytest.raises(ClaimHeld, match=rf"the thing is in use by PID {os.getpid()} on host .* since "):
            Claim(path, "the thing").acquire()
    assert not path.exists()
    # a holder killed without cleaning up (kill -9): the next claimant takes over, with a warning
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom otplug.claims import Claim\n"
                              f"Claim({str(path)!r}, 'x').acquire(); print('held', flush=True); time.sleep(600)"],
                             stdout=subprocess.PIPE, text=True, env=ENV)
    assert child.stdout.readline().strip() == "held"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert holder_of(path) is None
    with pytest.warns(UserWarning, match="ended without releasing it"):
        Claim(path, "x").acquire().release()


@pytest.mark.slow
def test_two_studies_on_one_folder_the_second_is_refused_and_the_first_is_unharmed(tmp_path):
    out = tmp_path / "study"
    first = subprocess.Popen([sys.executable, "-c", TINY_STUDY, str(out), "40"], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    _wait_for(out / ".otplug-study.claim", first)
    second = subprocess.run([sys.executable, "-m", "otplug", "study", "--demo", "--output-dir", str(out)], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    line = _one_line_error(second.stderr)
    assert f"study folder {out} is in use by PID {first.pid} on host " in line and "another --output-dir" in line
    err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, err[-3000:]
    rows = json.loads((out / "study.json").read_text())
    assert {r["method"] for r in rows} == {"target-only"} and not (out / ".otplug-study.claim").exists()


# ---------------------------------------------------------------------------------------------------------------------
# cells

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from otplug.lerobot.synthetic import make_dataset

    root = tmp_path_factory.mktemp("reliability_data")
    make_dataset(root / "real", repo_id="test/real", episode_lengths=(12, 14, 10), image_size=32, seed=1)
    return root


def _cell(data, study, steps=3):
    run_dir = study / "runs" / "bc" / "seed0"
    argv = ["--dataset.repo_id=test/real", f"--dataset.root={data / 'real'}", "--dataset.video_backend=pyav",
            "--policy.type=act", "--policy.pretrained_backbone_weights=null", "--policy.push_to_hub=false",
            "--policy.dim_model=32", "--policy.n_heads=2", "--policy.dim_feedforward=64",
            "--policy.n_encoder_layers=1", "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=5",
            "--policy.n_action_steps=5", "--num_workers=0", "--batch_size=4", "--log_freq=1",
            f"--save_freq={steps}", "--seed=0", "--wandb.enable=false", f"--steps={steps}", "--ot.enabled=false"]
    return Cell(name="bc/seed0", run_dir=run_dir, argv=argv, log=run_dir.parent / "seed0.log", threads=1)


JOB = """
import pickle, sys
from otplug.bench.launch import CellFailed, train_cell
cell = pickle.loads(bytes.fromhex(sys.argv[1]))
try:
    print("done", train_cell(cell, "cpu")["steps"], flush=True)
except CellFailed as exc:
    print("failed", exc, flush=True)
"""


@pytest.mark.slow
def test_two_grid_jobs_on_one_cell_one_trains_the_other_is_refused(data, tmp_path):
    import pickle

    cell = _cell(data, tmp_path / "study", steps=60)
    blob = pickle.dumps(cell).hex()
    first = subprocess.Popen([sys.executable, "-c", JOB, blob], env=ENV, stdout=subprocess.PIPE, text=True)
    _wait_for(cell.run_dir / ".otplug.lock", first)  # the first job's training holds the run folder
    second = subprocess.run([sys.executable, "-c", JOB, blob], env=ENV, capture_output=True, text=True, timeout=120)
    assert second.stdout.startswith("failed training cell bc/seed0 is in use by PID "), second.stdout + second.stderr
    assert "two jobs of one grid must not train the same cell" in second.stdout
    out = first.communicate(timeout=600)[0]
    assert out.strip() == "done 60", out
    # the second job touched nothing: the first's log and run are whole
    assert "Traceback" not in cell.log.read_text()
    assert json.loads((cell.run_dir / "train_summary.json").read_text())["steps"] == 60


@pytest.mark.slow
def test_a_study_resumed_while_a_training_of_an_earlier_invocation_runs_is_refused(data, tmp_path):
    """The study process was killed, its child training was not (an orphan, or a cluster job): a new invocation
    refuses at once naming the cell and the holder, and removes nothing."""
    cell = _cell(data, tmp_path / "study", steps=400)
    cell.run_dir.parent.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-m", "otplug", "train", f"--output_dir={cell.run_dir}", *cell.argv],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(cell.run_dir / ".otplug.lock", orphan)
        with pytest.raises(LaunchError, match=rf"training cell bc/seed0 is being trained by another process: a "
                                              rf"training \(PID {orphan.pid} on host"):
            run_cells([cell], LaunchConfig(), say=lambda *a: None)
        # train_cell itself never removes a folder a live training holds
        with pytest.raises(CellFailed, match="is still running elsewhere"):
            train_cell(cell, "cpu")
        assert (cell.run_dir / ".otplug.lock").exists() and orphan.poll() is None
    finally:
        orphan.kill()
        orphan.wait()


# ---------------------------------------------------------------------------------------------------------------------
# one study's rows

def _row(split="dev", scenes=(200000, 200004), steps=2, data_hash="a" * 12, seed=0, env="e1"):
    return {"method": "cotrain", "seed": seed, "domain": "real", "region": "A", "episodes": 4, "successes": 1,
            "success_rate": 0.25, "split": split, "scene_seeds": list(scenes), "steps": steps, "data_hash": data_hash,
            "environment_key": env}


@pytest.mark.parametrize("other,named", [
    (dict(split="test", scenes=(300000, 300004)), r"splits dev \(1 rows\), test \(1 rows\); scene ranges "
                                                  r"200000..200003 \(1 rows\), 300000..300003"),
    (dict(steps=1000), r"training steps 2 \(1 rows\), 1000 \(1 rows\)"),
    (dict(data_hash="b" * 12), r"data hashes aaaaaaaaaaaa \(1 rows\), bbbbbbbbbbbb"),
])
def test_rows_of_several_studies_are_refused_by_the_summary_and_the_report(tmp_path, other, named):
    from otplug.bench.study_summary import summarize

    rows = [_row(), _row(seed=1, **other)]
    with pytest.raises(StudyError, match=named):
        check_one_study(rows)
    with pytest.raises(StudyError, match="mixes rows of several studies"):
        summarize(rows, methods=("cotrain",), domains=("real",), regions=("A",), n_boot=100)
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text(json.dumps(rows))
    proc = subprocess.run([sys.executable, "-m", "otplug", "report", str(study)], env=ENV, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert f"{study / 'study.json'} mixes rows of several studies" in _one_line_error(proc.stderr)
    assert not (study / "report.html").exists()
    # rows from before a field existed (None) do not count as another study
    check_one_study([_row(), {**_row(seed=1), "steps": None, "data_hash": None}])


def test_runs_from_two_environments_are_kept_and_labelled():
    rows = [_row(seed=0, env="e1"), _row(seed=1, env="e2"), _row(seed=2, env="e2"), {**_row(seed=3), "environment_key":
                                                                                       None}]
    out = environments(rows)
    assert out["run_environments"] == {"e1": 1, "e2": 2, "not recorded": 1}
    assert out["environments_note"].startswith("the runs span 2 environments (e1: 1 runs, e2: 2 runs)")
    assert "environments_note" not in environments(rows[1:3])
    assert out["environment"]["packages"]["torch"] and len(out["environment_key"]) == 12


# ---------------------------------------------------------------------------------------------------------------------
# the data's content hash, and a study's inputs changed under it

def _poke_one_frame(root: Path, row: int) -> None:
    """Change one pixel of one frame of a LeRobot PNG dataset (its frames are PNG bytes inside the data parquet)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    path = sorted((root / "data").rglob("*.parquet"))[0]
    table = pq.read_table(path)
    key = next(n for n in table.column_names if n.startswith("observation.images."))
    cells = table.column(key).to_pylist()
    img = Image.open(io.BytesIO(cells[row]["bytes"])).convert("RGB")
    img.putpixel((0, 0), tuple((c + 1) % 256 for c in img.getpixel((0, 0))))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    cells[row] = {**cells[row], "bytes": buf.getvalue()}
    i = table.column_names.index(key)
    table = table.set_column(i, table.schema.field(i), pa.array(cells, type=table.schema.field(i).type))
    pq.write_table(table, path)


def test_content_hash_is_of_the_frames_not_the_files(tmp_path):
    from otplug.lerobot.content_hash import HASH_FILE, cached_content_hash, content_hash, kept_content_hash
    from otplug.lerobot.datasets import open_dataset
    from otplug.lerobot.synthetic import make_dataset

    for name in ("a", "b"):
        make_dataset(tmp_path / name, repo_id=f"t/{name}", episode_lengths=(6, 5), image_size=16, seed=3)
    ha, hb = (cached_content_hash(f"t/{n}", tmp_path / n) for n in ("a", "b"))
    assert ha == hb and len(ha) == 64  # two recordings of the same content (other files, other times)
    assert (tmp_path / "a" / HASH_FILE).is_file()
    # one pixel of one frame changes it; the kept hash is recomputed because a file changed
    assert kept_content_hash(tmp_path / "a") == ha
    _poke_one_frame(tmp_path / "a", row=3)
    assert kept_content_hash(tmp_path / "a") is None  # the kept hash belongs to other files now
    assert cached_content_hash("t/a", tmp_path / "a") != ha
    assert content_hash(open_dataset("t/b", tmp_path / "b")) == hb


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    import otplug.bench.study as study

    tiny = dict(real_episodes=3, sim_episodes=4, batch_size=4, ot_batch_size=2, heldout_episodes=1)
    init = study.StudyConfig.__init__

    def patched(self, **kw):
        init(self, **{**tiny, **kw})

    monkeypatch.setattr(study.StudyConfig, "__init__", patched)
    out = tmp_path / "study"
    args = ["study", "--output-dir", str(out), "--methods", "target-only", "--seeds", "1", "--steps", "2",
            "--episodes", "2", "-q"]
    return out, args


@pytest.mark.slow
def test_inputs_changed_under_a_study_end_in_one_line_and_a_rerun_continues(tiny_study, capsys):
    from otplug.cli import main

    out, args = tiny_study
    assert main(args) == 0
    run = out / "runs" / "target-only" / "seed0"
    summary = json.loads((out / "study_summary.json").read_text())
    assert len(summary["data_hash"]) == 12 and set(summary["data_hashes"]) == {"real", "sim", "heldout"}
    assert summary["environment"]["packages"]["torch"] and summary["run_environments"] == {
        json.loads((run / "run_info.json").read_text())["environment_key"]: 1}
    info = json.loads((run / "run_info.json").read_text())
    assert info["data_hashes"]["dataset"] == summary["data_hashes"]["real"]  # the run knows what it trained on
    md = (out / "study.md").read_text()
    assert f"Data: content hash {summary['data_hash']}" in md and f"Environment {summary['environment_key']}" in md
    capsys.readouterr()

    # a finished run's weights removed: trained again, its old evaluations dropped
    (run / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").unlink()
    assert main(args) == 0
    assert (run / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
    # an evaluation file cut by something else: evaluated again
    evals = out / "evals" / "target-only" / "seed0"
    (evals / "real_A.json").write_text('{"domain": "re')
    assert main(args) == 0
    assert json.loads((evals / "real_A.json").read_text())["episodes"] == 2
    # a place the study writes made unusable (a file where its folder was): one line naming it, exit 2
    import shutil

    shutil.rmtree(out / "embeddings")
    (out / "embeddings").write_text("not a folder")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("otplug: error: ") and str(out / "embeddings") in err
    assert err.count("\n") == 1
    (out / "embeddings").unlink()
    assert main(args) == 0
    # the record of the folder's settings cut: refused in one line (it cannot be redone: it is what the runs used)
    saved = (out / "study_config.json").read_text()
    (out / "study_config.json").write_text(saved[:20])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "study_config.json is unreadable" in err and "Traceback" not in err and err.count("\n") == 1
    (out / "study_config.json").write_text(saved)
    # the data changed under the study (one frame): refused, naming the dataset and the recorded hash
    _poke_one_frame(out / "data" / "real_A", row=0)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the study's data changed since its runs were trained (real: content hash" in err
    assert "Traceback" not in err and err.count("\n") == 1
