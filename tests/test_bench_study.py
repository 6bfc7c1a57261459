"""``otplug study``: the summary statistics, the output schema and resumability (a tiny study end to end)."""

from __future__ import annotations

import json

import pytest

from otplug.bench.study import METHODS, StudyConfig, StudyError, main, summarize_rows
from otplug.stats import wilson_interval as wilson


def test_wilson_interval_known_values():
    lo, hi = wilson(52, 100)
    assert lo == pytest.approx(0.4231, abs=1e-3) and hi == pytest.approx(0.6153, abs=1e-3)
    assert wilson(0, 50)[0] == pytest.approx(0.0, abs=1e-12) and wilson(50, 50)[1] == pytest.approx(1.0)


def test_summary_pools_seeds_and_orders_methods():
    rows = [
        {"method": "cotrain", "seed": 1, "domain": "real", "region": "B", "episodes": 50, "successes": 20,
         "success_rate": 0.4},
        {"method": "cotrain", "seed": 0, "domain": "real", "region": "B", "episodes": 50, "successes": 30,
         "success_rate": 0.6},
        {"method": "target-only", "seed": 0, "domain": "real", "region": "B", "episodes": 50, "successes": 0,
         "success_rate": 0.0},
    ]
    cells = summarize_rows(rows)
    assert [c["method"] for c in cells] == ["target-only", "cotrain"]
    co = cells[1]
    assert co["episodes"] == 100 and co["successes"] == 50 and co["success_rate"] == 0.5
    assert co["per_seed"] == [0.6, 0.4] and co["ci95"] == list(wilson(50, 100))
    assert co["seed_mean_ci95"][0] < 0.5 < co["seed_mean_ci95"][1]


def test_bad_options_are_one_message(tmp_path, capsys):
    from otplug.cli import main as cli

    assert cli(["study", "--output-dir", str(tmp_path / "s"), "--methods", "cotrain,mmdd"]) == 2
    assert "unknown ['mmdd']" in capsys.readouterr().err
    assert cli(["study", "--output-dir", str(tmp_path / "s"), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("lerobot")
    out = tmp_path / "study"
    args = ["--output-dir", str(out), "--methods", "target-only,cotrain-ot", "--seeds", "1", "--steps", "2",
            "--episodes", "4", "-q"]
    import otplug.bench.study as study

    tiny = dict(real_episodes=3, sim_episodes=4, batch_size=4, ot_batch_size=2)
    monkeypatch.setattr(study.StudyConfig, "__init__", _with_defaults(study.StudyConfig.__init__, tiny))
    assert main(args) == 0
    rows = json.loads((out / "study.json").read_text())
    assert {(r["method"], r["domain"], r["region"]) for r in rows} == {
        (m, "real", g) for m in ("target-only", "cotrain-ot") for g in ("A", "B")}
    for r in rows:
        assert set(r) == {"method", "seed", "domain", "region", "episodes", "successes", "success_rate"}
        assert r["episodes"] == 4 and 0 <= r["successes"] <= 4
    assert "| target-only |" in (out / "study.md").read_text()
    assert (out / "study.png").stat().st_size > 1000
    assert (out / "embeddings" / "cotrain-ot.png").is_file()
    # resume: a finished study trains nothing again; a deleted evaluation is redone, the rest kept
    ckpt = out / "runs" / "target-only" / "seed0" / "train_summary.json"
    mtime = ckpt.stat().st_mtime
    (out / "evals" / "cotrain-ot" / "seed0" / "real_B.json").unlink()
    assert main(args) == 0
    assert ckpt.stat().st_mtime == mtime
    assert json.loads((out / "study.json").read_text()) == rows
    # another configuration into the same folder is refused
    with pytest.raises(StudyError, match="other settings"):
        main([*args[:-3], "--episodes", "8", "-q"])
    # a method whose OT config changed since (an older recommended config) is refused, not pooled
    conf = out / "configs" / "cotrain-ot.json"
    saved = conf.read_text()
    conf.write_text(json.dumps({**json.loads(saved), "reg": 0.5}))
    with pytest.raises(StudyError, match="'cotrain-ot' was run here with another OT config"):
        main(args)
    conf.write_text(saved)
    # more seeds are a selection, not a setting: seed 0 is kept, seed 1 is trained and evaluated
    more = [a if a != "1" else "2" for a in args]
    assert main(more) == 0
    assert ckpt.stat().st_mtime == mtime
    assert sorted({r["seed"] for r in json.loads((out / "study.json").read_text())}) == [0, 1]
    assert json.loads((out / "study_config.json").read_text())["seeds"] == 2


def _with_defaults(init, over):
    def patched(self, **kw):
        init(self, **{**over, **kw})
    return patched


def test_methods_are_documented_and_their_configs_valid():
    from pathlib import Path

    import otplug.bench.study as study_mod
    from otplug.bench.study import ot_config_for
    from otplug.config import load_config

    assert set(StudyConfig().methods) < set(METHODS)
    assert {"target-only", "source-only", "cotrain", "cotrain-mmd", "cotrain-ot"} <= set(StudyConfig().methods)
    docs = (Path(__file__).parents[1] / "docs" / "benchmark.md").read_text()
    for method in METHODS:
        assert f"| `{method}` |" in docs, method  # a row of the methods table
        assert f"``{method}``" in study_mod.__doc__, method
        cfg = ot_config_for(method)
        if cfg is not None:
            load_config(cfg)  # raises on an invalid config
