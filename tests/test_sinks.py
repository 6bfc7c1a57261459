"""Metric sinks: JSONL rows, heatmap PNGs, TensorBoard files, wandb optional."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from otplug.errors import OtplugError
from otplug.sinks import make_sinks
from otplug.sinks.heatmap import PlanHeatmapSink
from otplug.sinks.jsonl import JsonlSink, read_jsonl


def test_jsonl_rows(tmp_path):
    s = JsonlSink(tmp_path)
    s.log(1, {"bc_loss": 1.5, "ot_loss": 0.25, "ot_pi_sum": 0.9, "ot_solver/converged": True, "note": "x"})
    s.log(2, {"bc_loss": 1.0, "ot_loss": float("nan"), "world_size": 2})
    s.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0] == {"step": 1, "bc_loss": 1.5, "ot_loss": 0.25, "ot_pi_sum": 0.9, "ot_solver/converged": 1.0}
    assert rows[1] == {"step": 2, "bc_loss": 1.0, "ot_loss": None, "world_size": 2, "nonfinite": ["ot_loss"]}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_heatmap_png_every_n(tmp_path):
    s = PlanHeatmapSink(tmp_path, every=2)
    assert not s.wants_plan(1) and s.wants_plan(2)
    plan = np.eye(4) / 4
    s.log_plan(2, plan, {})
    out = tmp_path / "plans" / "plan_000002.png"
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_sinks_always_has_jsonl_and_fans_out(tmp_path):
    group = make_sinks(tmp_path, ["console", "plan-heatmap"], {"plan-heatmap": {"every": 1}})
    names = [type(s).__name__ for s in group]
    assert names[0] == "JsonlSink" and "ConsoleSink" in names and "PlanHeatmapSink" in names
    group.log(1, {"bc_loss": 1.0})
    assert group.wants_plan(1)
    group.log_plan(1, np.ones((3, 3)) / 9)
    group.close()
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "plans" / "plan_000001.png").exists()


def test_unknown_sink_suggests(tmp_path):
    with pytest.raises(OtplugError, match="did you mean 'jsonl'"):
        make_sinks(tmp_path, ["jsnol"])


def test_bad_sink_option_is_a_clear_error(tmp_path):
    with pytest.raises(OtplugError, match="plan-heatmap"):
        make_sinks(tmp_path, ["plan-heatmap"], {"plan-heatmap": {"evrey": 3}})


def test_unknown_sink_opens_no_file(tmp_path):
    with pytest.raises(OtplugError, match="jsnol"):
        make_sinks(tmp_path, ["console", "jsnol"])
    assert not (tmp_path / "metrics.jsonl").exists()  # names are checked before any sink is built


def test_failed_sink_closes_the_ones_built_before(tmp_path, monkeypatch):
    closed = []
    monkeypatch.setattr(JsonlSink, "close", lambda self: closed.append(self._fh.close()))
    with pytest.raises(OtplugError, match="every"):
        make_sinks(tmp_path, ["plan-heatmap"], {"plan-heatmap": {"every": 0}})  # the factory's own error
    assert len(closed) == 1  # the always-on metrics.jsonl file is not left open


def test_wandb_absent_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(OtplugError, match="pip install wandb"):
        make_sinks(tmp_path, ["wandb"])


def test_tensorboard_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    group = make_sinks(tmp_path, ["tensorboard"])
    group.log(1, {"bc_loss": 1.0})
    group.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_heatmap_without_matplotlib_is_a_clear_error_at_start_up(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(OtplugError, match="pip install matplotlib"):
        make_sinks(tmp_path, ["plan-heatmap"])
