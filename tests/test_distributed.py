"""Global OT scope over 2 real processes (torchrun + gloo) equals one process on the concatenated batch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import otplug
from otplug.distributed import scoped_ot

WORKER = Path(__file__).parent / "dist" / "global_ot_worker.py"


def load_worker():
    spec = importlib.util.spec_from_file_location("global_ot_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("solver", ["sinkhorn", "pot"])
def test_global_scope_matches_single_process(tmp_path, solver):
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(out), solver],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist_res = json.loads(out.read_text())
    assert dist_res["world_size"] == 2

    worker = load_worker()
    src, tgt = worker.data()
    enc = worker.encoder()
    cfg = dict(worker.CFG, solver=solver)
    res = otplug.OTLoss(cfg)(src, tgt, encoder=enc)
    res.loss.backward()
    assert dist_res["loss"] == pytest.approx(res.metrics["ot_loss"], rel=1e-12)
    torch.testing.assert_close(torch.tensor(dist_res["plan"], dtype=torch.float64), res.plan, rtol=1e-12, atol=1e-15)
    for got, p in zip(dist_res["grads"], enc.parameters(), strict=True):
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), p.grad.flatten(), rtol=1e-10, atol=1e-12)


def test_scope_rank_is_plain_call_and_bad_scope_errors():
    worker = load_worker()
    src, tgt = worker.data()
    ot = otplug.OTLoss(dict(worker.CFG, solver="pot"))
    assert scoped_ot(ot, src, tgt, worker.encoder(), scope="global").metrics["ot_loss"] == pytest.approx(
        ot(src, tgt, encoder=worker.encoder()).metrics["ot_loss"])
    with pytest.raises(otplug.OtplugError, match="rank' or 'global"):
        scoped_ot(ot, src, tgt, scope="world")


def test_divergence_on_one_process_is_seen_by_all(tmp_path):
    pytest.importorskip("lerobot")
    out = tmp_path / "flag"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).parent / "dist" / "finite_worker.py"), str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        res = json.loads(Path(f"{out}.{rank}").read_text())
        assert res == {"ok_all": True, "diverged": False}
