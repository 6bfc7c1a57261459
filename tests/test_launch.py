"""The grid launcher (otplug.bench.launch): real ``otplug train`` cells (tiny ACT, tiny datasets) run locally and
through submitit's local executor; resume, failures with their log, the config's messages and the sbatch options."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from otplug.bench.launch import (
    CLUSTER_ENV,
    DEFAULT_TIMEOUT_MIN,
    Cell,
    LaunchConfig,
    LaunchError,
    add_launch_arguments,
    launch_config_from_args,
    run_cells,
    submitit_parameters,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pytest.importorskip("lerobot")
    from otplug.lerobot.synthetic import make_dataset

    root = tmp_path_factory.mktemp("launch_data")
    make_dataset(root / "real", repo_id="test/real", episode_lengths=(12, 14, 10), image_size=32, seed=1)
    return root


def _argv(data, seed, root=None):
    """A tiny BC training (3 steps): a few seconds."""
    return [
        "--dataset.repo_id=test/real", f"--dataset.root={root or data / 'real'}", "--dataset.video_backend=pyav",
        "--policy.type=act", "--policy.pretrained_backbone_weights=null", "--policy.push_to_hub=false",
        "--policy.dim_model=32", "--policy.n_heads=2", "--policy.dim_feedforward=64", "--policy.n_encoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=5", "--policy.n_action_steps=5", "--num_workers=0",
        "--batch_size=4", "--log_freq=1", "--save_freq=3", f"--seed={seed}", "--wandb.enable=false", "--steps=3",
        "--ot.enabled=false",
    ]


def _cell(data, study, name, seed, **kw):
    run_dir = study / "runs" / name / f"seed{seed}"
    return Cell(name=f"{name}/seed{seed}", run_dir=run_dir, argv=_argv(data, seed, **kw),
                log=run_dir.parent / f"seed{seed}.log", threads=1)


def _submitit_cfg(study, **kw):
    return LaunchConfig(launcher="submitit", folder=study / "submitit", cluster="local", timeout_min=10, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# real runs

@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_cell_grid(data, tmp_path):
    pytest.importorskip("submitit")
    study = tmp_path / "study"
    cells = [_cell(data, study, "bc", 0), _cell(data, study, "bc", 1)]
    said = []
    out = run_cells(cells, _submitit_cfg(study), say=said.append)
    assert [o.cell for o in out] == cells
    for o in out:
        assert o.ok and o.error is None and not o.resumed, o
        assert o.summary == json.loads((o.cell.run_dir / "train_summary.json").read_text()) and o.summary["steps"] == 3
        assert (o.cell.run_dir / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
        assert o.cell.log.is_file() and o.log == o.cell.log
    # the two seeds really are two trainings
    assert out[0].summary["last"] != out[1].summary["last"]
    # submitit's own files (one stdout/stderr/result per job) are in its folder, the folder is printed once
    assert len(list((study / "submitit").glob("*_result.pkl"))) == 2
    assert sum(str(study / "submitit") in s for s in said) == 1
    assert sum(s.startswith("submitted") for s in said) == 1 and "(bc/seed0)" in said[1] and "(bc/seed1)" in said[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "submitit"])
def test_a_failing_cell_is_reported_with_its_log_and_the_other_finishes(data, tmp_path, launcher):
    if launcher == "submitit":
        pytest.importorskip("submitit")
    study = tmp_path / "study"
    bad = _cell(data, study, "broken", 0, root=tmp_path / "no_such_dataset")
    good = _cell(data, study, "bc", 0)
    cfg = _submitit_cfg(study) if launcher == "submitit" else LaunchConfig(jobs=2)
    said = []
    out = run_cells([bad, good], cfg, say=said.append)
    assert out[1].ok and out[1].summary["steps"] == 3
    failed = out[0]
    assert not failed.ok and failed.summary is None and not (bad.run_dir / "train_summary.json").exists()
    assert "\n" not in failed.error and "training broken/seed0 failed (exit" in failed.error
    # the error is the training's last line (lerobot, finding no dataset there, tries the Hub: offline here)
    assert f"log: {bad.log}" in failed.error and bad.log.read_text().split("\n")[-2][:60] in failed.error
    if launcher == "submitit":  # the job's stderr: the trace, and the training log's last lines
        assert failed.log.name.endswith("_log.err") and failed.log.parent == study / "submitit"
        err = failed.log.read_text()
        assert f"last lines of {bad.log}" in err and "CellFailed" in err
    else:
        assert failed.log == bad.log
    assert any(s.startswith("FAILED broken/seed0") for s in said)
    assert any(s.startswith("trained bc/seed0") for s in said)


@pytest.mark.slow
def test_resume_keeps_a_finished_cell_and_restarts_an_unfinished_one(data, tmp_path):
    study = tmp_path / "study"
    done, half = _cell(data, study, "bc", 0), _cell(data, study, "bc", 1)
    cfg = LaunchConfig(jobs=1)
    first = run_cells([done], cfg, say=lambda *a: None)[0]
    assert first.ok and not first.resumed
    mtime = (done.run_dir / "train_summary.json").stat().st_mtime_ns
    # an interrupted run: a folder with a stale file and no train_summary.json
    half.run_dir.mkdir(parents=True)
    (half.run_dir / "stale.txt").write_text("from a killed run")
    said = []
    out = run_cells([done, half], cfg, say=said.append)
    assert out[0].ok and out[0].resumed and out[0].summary == first.summary and out[0].seconds == 0.0
    assert (done.run_dir / "train_summary.json").stat().st_mtime_ns == mtime  # not trained again
    assert out[1].ok and not out[1].resumed and out[1].summary["steps"] == 3
    assert not (half.run_dir / "stale.txt").exists()  # restarted from scratch
    assert said[0] == "1 of 2 trainings already finished (kept)"
    assert [s for s in said if s.startswith("trained")] == [s for s in said if "bc/seed1" in s]
    # everything finished: nothing runs (no submitit job either)
    t0 = time.perf_counter()
    again = run_cells([done, half], _submitit_cfg(study), say=lambda *a: None)
    assert all(o.ok and o.resumed for o in again) and time.perf_counter() - t0 < 5
    assert not (study / "submitit").exists()


# ---------------------------------------------------------------------------------------------------------------------
# configuration

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"launcher": "slurm"}, "--launcher: must be one of 'local', 'submitit', got 'slurm'"),
    ({"jobs": -1}, "--jobs: must be an integer >= 0, got -1"),
    ({"jobs": 1.5}, "--jobs: expected an integer, got float 1.5"),
    ({"launcher": "submitit", "folder": "f", "timeout_min": 0}, "--timeout-min: must be an integer >= 1, got 0"),
    ({"launcher": "submitit", "folder": "f", "gpus_per_job": -1}, "--gpus-per-job: must be an integer >= 0, got -1"),
    ({"launcher": "submitit", "folder": "f", "cpus_per_job": 0}, "--cpus-per-job: must be an integer >= 1, got 0"),
    ({"launcher": "submitit", "folder": "f", "mem_gb": 0.0}, "--mem-gb: must be > 0, got 0.0"),
    ({"launcher": "submitit", "folder": "f", "array_parallelism": 0},
     "--array-parallelism: must be an integer >= 1, got 0"),
    ({"launcher": "submitit", "folder": "f", "partition": ""}, "--slurm-partition: must be a non-empty line"),
    ({"launcher": "submitit", "folder": "f", "slurm_extra": ["account"]}, "--slurm-extra: must be KEY=VALUE"),
    ({"launcher": "submitit", "folder": "f", "slurm_extra": ["=abc"]}, "--slurm-extra: must be KEY=VALUE"),
    ({"launcher": "submitit", "folder": "f", "slurm_extra": ["partition=gpu"]},
     "--slurm-extra partition=...: use --slurm-partition"),
    ({"launcher": "submitit", "folder": "f", "slurm_extra": ["time=10"]}, "--slurm-extra time=...: use --timeout-min"),
    ({"launcher": "submitit", "folder": "f", "slurm_setup": ["a\nb"]}, "--slurm-setup: must be a non-empty line"),
    ({"launcher": "submitit", "folder": "f", "cluster": "aws"}, f"${CLUSTER_ENV}: must be one of"),
    ({"launcher": "submitit"}, "--submitit-folder: needed with --launcher submitit"),
    ({"slurm_extra": ["account=a"], "partition": "gpu"}, "--slurm-partition, --slurm-extra need --launcher submitit"),
    ({"gpus_per_job": 1}, "--gpus-per-job needs --launcher submitit"),
])
def test_launch_config_errors_name_the_flag(kwargs, message):
    with pytest.raises(LaunchError) as info:
        LaunchConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cell_refuses_the_flags_the_launcher_sets(tmp_path):
    for arg in ("--output_dir=x", "--policy.device=cuda"):
        with pytest.raises(LaunchError, match=f"cell a/seed0: {arg.split('=')[0]} is set by the launcher"):
            Cell(name="a/seed0", run_dir=tmp_path / "r", argv=["--steps=3", arg], log=tmp_path / "l")


def test_cells_must_be_distinct(tmp_path):
    c = Cell(name="a", run_dir=tmp_path / "r", argv=[], log=tmp_path / "l")
    with pytest.raises(LaunchError, match="share a name or a run folder"):
        run_cells([c, Cell(name="b", run_dir=tmp_path / "r", argv=[], log=tmp_path / "l2")], LaunchConfig())


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_launch_arguments(p)
    return p.parse_args(list(argv))


def test_cli_flags_build_the_config(tmp_path):
    pytest.importorskip("submitit")
    cfg = launch_config_from_args(_parse(), tmp_path)
    assert cfg == LaunchConfig() and cfg.timeout_min == DEFAULT_TIMEOUT_MIN
    cfg = launch_config_from_args(_parse(
        "--launcher", "submitit", "--slurm-partition", "gpu", "--gpus-per-job", "1", "--cpus-per-job", "8",
        "--mem-gb", "32", "--timeout-min", "90", "--array-parallelism", "20", "--slurm-extra", "account=lab",
        "--slurm-extra", "qos=high", "--slurm-setup", "module load cuda", "--slurm-setup", "source venv/bin/activate",
    ), tmp_path)
    assert cfg.folder == tmp_path / "submitit" and cfg.partition == "gpu" and cfg.gpus_per_job == 1
    assert cfg.cpus_per_job == 8 and cfg.mem_gb == 32.0 and cfg.timeout_min == 90 and cfg.array_parallelism == 20
    assert cfg.extra_parameters() == {"account": "lab", "qos": "high"}
    assert cfg.slurm_setup == ("module load cuda", "source venv/bin/activate")
    assert launch_config_from_args(_parse("--launcher", "submitit", "--submitit-folder", str(tmp_path / "x")),
                                   tmp_path).folder == tmp_path / "x"
    with pytest.raises(LaunchError, match="--slurm-partition needs --launcher submitit"):
        launch_config_from_args(_parse("--slurm-partition", "gpu"), tmp_path)


def test_submitit_missing_says_how_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(LaunchError, match=r"--launcher submitit needs submitit: pip install 'otplug\[cluster\]'"):
        launch_config_from_args(_parse("--launcher", "submitit"), tmp_path)
    c = Cell(name="a", run_dir=tmp_path / "r", argv=[], log=tmp_path / "l")
    with pytest.raises(LaunchError, match="pip install 'otplug"):
        run_cells([c], LaunchConfig(launcher="submitit", folder=tmp_path / "s"))


def test_the_local_launcher_passes_no_cluster_options():
    assert submitit_parameters(LaunchConfig(launcher="submitit", folder="f")) == {
        "name": "otplug-train", "timeout_min": DEFAULT_TIMEOUT_MIN}


def test_sbatch_options_of_a_slurm_config(tmp_path, monkeypatch):
    """What update_parameters receives, accepted by submitit's real SLURM executor, and the sbatch script it writes
    for a 40-task array (nothing is submitted)."""
    submitit = pytest.importorskip("submitit")
    from submitit.slurm import slurm

    cfg = LaunchConfig(launcher="submitit", folder=tmp_path / "sub", partition="gpu", gpus_per_job=1,
                       cpus_per_job=8, mem_gb=32, timeout_min=60, array_parallelism=20,
                       slurm_extra=("account=lab", "qos=high"), slurm_setup=("module load cuda",))
    params = submitit_parameters(cfg)
    assert params == {
        "name": "otplug-train", "timeout_min": 60, "slurm_partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 8,
        "mem_gb": 32, "slurm_array_parallelism": 20, "slurm_additional_parameters": {"account": "lab", "qos": "high"},
        "slurm_setup": ["module load cuda"],
    }
    # submitit builds its SLURM executor only where `srun` exists: say it does (no job is submitted)
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    ex = submitit.AutoExecutor(folder=cfg.folder, cluster="slurm")
    ex.update_parameters(**params)  # submitit validates every name and value here
    script = slurm._make_sbatch_string(command="python -m submitit.core._submit x", folder=cfg.folder, map_count=40,
                                       **ex._executor.parameters)
    lines = set(script.splitlines())
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=60",
                 "--array=0-39%20", "--account=lab", "--qos=high", "--job-name=otplug-train"):
        assert f"#SBATCH {flag}" in lines, flag
    assert "module load cuda" in lines
    # a configuration without those options sends none of them
    bare = submitit.AutoExecutor(folder=cfg.folder, cluster="slurm")
    bare.update_parameters(**submitit_parameters(LaunchConfig(launcher="submitit", folder=cfg.folder)))
    text = slurm._make_sbatch_string(command="x", folder=cfg.folder, **bare._executor.parameters)
    assert "--partition" not in text and "--gpus-per-node" not in text and f"--time={DEFAULT_TIMEOUT_MIN}" in text


def test_a_job_that_left_no_result_is_one_line(tmp_path):
    """submitit's own error for a job that ended without a result (time limit, killed, node lost) becomes one line
    with the job's state."""
    pytest.importorskip("submitit")
    from submitit.local.local import LocalJob

    from otplug.bench.launch import _job_error

    job = LocalJob(folder=tmp_path, job_id="4242")  # no process, no result pickle
    job._results_timeout_s = 0
    with pytest.raises(Exception) as info:
        job.result()
    assert type(info.value).__name__ == "UncompletedJobError"
    assert _job_error(info.value) == ("job 4242 ended without a result (state: NO PROCESS AND NO RESULT; e.g. time "
                                      "limit or memory)")


def test_the_cluster_can_be_forced_by_the_environment(tmp_path, monkeypatch):
    """$OTPLUG_SUBMITIT_CLUSTER is read when the grid runs; a wrong value is one message."""
    pytest.importorskip("submitit")
    monkeypatch.setenv(CLUSTER_ENV, "aws")
    c = Cell(name="a", run_dir=tmp_path / "r", argv=[], log=tmp_path / "l")
    with pytest.raises(LaunchError, match=rf"\${CLUSTER_ENV}: must be one of slurm, local, debug, got 'aws'"):
        run_cells([c], LaunchConfig(launcher="submitit", folder=tmp_path / "s"))
