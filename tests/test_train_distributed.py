"""`otplug train` under torch.distributed.run with 2 CPU processes (gloo): rank and global OT scopes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lerobot")
pytest.importorskip("accelerate")


def _torchrun(args, tmp_path, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("OTPLUG_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "otplug", "train", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["rank", "global"])
def test_two_processes(tmp_path, scope):
    out = tmp_path / "run"
    proc = _torchrun(["--demo", "--steps", "4", "--no-baseline", "--ot-scope", scope, "--output-dir", str(out)],
                     tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > 0]  # step 0: the alignment diagnostics of the untrained policy
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # written once, by the main process
    assert all(r["world_size"] == 2 and r["ot_pi_sum"] > 0 for r in rows)
    if scope == "global":
        assert rows[0]["ot_global_n_src"] == 16  # 8 pairs per process, one plan over both
    else:
        assert "ot_global_n_src" not in rows[0]
    assert (out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").exists()


@pytest.mark.slow
def test_demo_with_baseline_under_torchrun(tmp_path):
    """The documented command: OT run, baseline and summary in the same two processes (the baseline used to
    fail after the first run had torn the process group down)."""
    out = tmp_path / "demo"
    proc = _torchrun(["--demo", "--steps", "2", "--output-dir", str(out)], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "summary.md").is_file() and (out / "baseline" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_error_ends_every_process(tmp_path):
    proc = _torchrun(["--demo", "--steps", "2", "--no-baseline", "--output-dir", str(tmp_path / "x"),
                      "--ot.pair_info=/nope/pair_info.json"], tmp_path, timeout=180)
    assert proc.returncode != 0
    assert "--ot.pair_info: no such file" in proc.stderr
