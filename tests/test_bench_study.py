"""``otplug study``: the summary statistics, the output schema and resumability (a tiny study end to end)."""

from __future__ import annotations

import json

import pytest

from otplug.bench.study import METHODS, StudyConfig, StudyError, main
from otplug.bench.study_config import SPLIT_SCENE_BASE, SPLIT_SCENE_SPAN, SPLIT_TRAINING_SEED_BASE
from otplug.bench.study_summary import summarize


def _row(method, seed, domain, region, successes, episodes=100):
    return {"method": method, "seed": seed, "domain": domain, "region": region, "episodes": episodes,
            "successes": successes, "success_rate": successes / episodes}


def test_summary_is_at_the_seed_level():
    """Means over seeds with a t interval, paired differences against co-training, gaps and the gap closed:
    checked against values computed by hand (scipy's t quantile only)."""
    from scipy.stats import t

    co = {"A": {"sim": [90, 92, 88], "real": [70, 60, 65]}, "B": {"sim": [90, 85, 95], "real": [60, 65, 50]}}
    ot = {"A": {"sim": [90, 90, 90], "real": [80, 70, 75]}, "B": {"sim": [88, 84, 90], "real": [70, 75, 60]}}
    rows = [_row(m, s, d, g, tab[g][d][s]) for m, tab in (("cotrain", co), ("cotrain-ot", ot))
            for g in "AB" for d in ("sim", "real") for s in range(3)]
    rows += [_row("target-only", s, "real", "B", 0) for s in range(3)]
    out = summarize(rows, methods=("target-only", "cotrain", "cotrain-ot"), domains=("real", "sim"),
                    regions=("A", "B"), n_boot=2000)
    cell = next(c for c in out["cells"] if (c["method"], c["domain"], c["region"]) == ("cotrain", "real", "B"))
    rates = [0.60, 0.65, 0.50]
    mean = sum(rates) / 3
    sd = (sum((r - mean) ** 2 for r in rates) / 2) ** 0.5
    half = t.ppf(0.975, 2) * sd / 3 ** 0.5
    assert cell["mean"] == pytest.approx(mean) and cell["ci95"] == pytest.approx([mean - half, mean + half])
    assert cell["pooled_rate"] == pytest.approx(175 / 300) and len(cell["episode_noise_wilson95"]) == 2
    comp = next(c for c in out["comparisons"]
                if (c["method"], c["domain"], c["region"]) == ("cotrain-ot", "real", "B"))
    d = [0.10, 0.10, 0.10]  # OT - co-training per seed on real B
    assert comp["paired"]["mean"] == pytest.approx(0.10) and comp["paired"]["differences"] == pytest.approx(d)
    assert comp["paired"]["separated"] is True  # identical differences: a zero-width interval away from 0
    assert comp["hierarchical_bootstrap"]["ci95"][0] < 0.10 < comp["hierarchical_bootstrap"]["ci95"][1]
    gap_b = next(g for g in out["gaps"] if (g["method"], g["region"]) == ("cotrain", "B"))["gap"]
    assert gap_b["mean"] == pytest.approx(((90 - 60) + (85 - 65) + (95 - 50)) / 300)
    closed = next(g for g in out["gap_closed"] if g["region"] == "B")
    gc = [0.30, 0.20, 0.45]
    gm = [0.18, 0.09, 0.30]
    assert closed["gap_cotrain"] == pytest.approx(sum(gc) / 3) and closed["gap_method"] == pytest.approx(sum(gm) / 3)
    assert closed["fraction"] == pytest.approx(1 - sum(gm) / sum(gc))
    assert not any(c["method"] == "target-only" for c in out["gap_closed"])  # not an alignment method
    assert out["ends"] == []  # no row recorded where its episodes ended
    json.dumps(out, allow_nan=False)  # JSON-safe


def test_where_episodes_end_is_a_seed_mean():
    rows = [{**_row("cotrain-ot", s, "real", "B", 1), "ended_other_side": n} for s, n in enumerate((30, 20, 40))]
    rows += [{**_row("cotrain", s, "real", "B", 10), "ended_other_side": 0} for s in range(3)]
    rows += [_row("cotrain", 3, "real", "B", 10)]  # evaluated before it was recorded: left out, not counted as 0
    out = summarize(rows, methods=("cotrain", "cotrain-ot"), domains=("real",), regions=("B",), n_boot=200)
    by = {e["method"]: e for e in out["ends"]}
    assert by["cotrain-ot"]["other_side"]["mean"] == pytest.approx(0.30)
    assert by["cotrain-ot"]["other_side"]["per_seed"] == pytest.approx([0.30, 0.20, 0.40])
    assert by["cotrain"]["seeds"] == 3 and by["cotrain"]["other_side"]["mean"] == 0.0


def test_offline_signals_are_ranked_against_real_success():
    rows = [_row("cotrain", s, "real", "B", 10 * s) for s in range(6)]
    offline = {("cotrain", s): {"domain_probe_acc": 1.0 - 0.1 * s, "ot_loss": None} for s in range(6)}
    out = summarize(rows, offline, methods=("cotrain",), domains=("real",), regions=("B",), n_boot=500)
    (sig,) = out["signals"]
    assert sig["signal"] == "domain_probe_acc" and sig["runs"] == 6 and sig["rho"] == pytest.approx(-1.0)


def test_splits_are_disjoint_and_recorded():
    dev, test = StudyConfig(split="dev", eval_episodes=500), StudyConfig(split="test", eval_episodes=500)
    assert dev.scene_seeds[1] <= test.scene_seeds[0] or test.scene_seeds[1] <= dev.scene_seeds[0]
    assert not set(dev.training_seeds) & set(test.training_seeds)
    assert dev.training_seeds == tuple(range(SPLIT_TRAINING_SEED_BASE["dev"], SPLIT_TRAINING_SEED_BASE["dev"] + 10))
    # the training demos' scenes (real: data_seed + i, sim: data_seed + 1000 + i, held-out: + 50000 + i) lie below
    assert min(SPLIT_SCENE_BASE.values()) >= 50_000 + 10_000
    bases = sorted(SPLIT_SCENE_BASE.values())
    assert all(b - a >= SPLIT_SCENE_SPAN for a, b in zip(bases, bases[1:]))
    with pytest.raises(StudyError, match="--episodes must be in"):
        StudyConfig(eval_episodes=SPLIT_SCENE_SPAN + 1)
    with pytest.raises(ValueError):
        StudyConfig(split="train")


def test_every_method_trains_on_the_same_rows_per_step():
    from otplug.bench.study import policy_args

    cfg = StudyConfig()
    sizes = {m: [a for a in policy_args(cfg, m) if a.startswith("--batch_size=")] for m in METHODS}
    assert sizes["target-only"] == sizes["source-only"] == [f"--batch_size={cfg.rows_per_step}"]
    assert cfg.rows_per_step == cfg.batch_size + 2 * cfg.ot_batch_size
    assert all(sizes[m] == [f"--batch_size={cfg.batch_size}"] for m in METHODS if "cotrain" in m)


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
            "--episodes", "4", "-q"]  # the full study's preset: real and sim domains
    import otplug.bench.study as study

    tiny = dict(real_episodes=3, sim_episodes=4, batch_size=4, ot_batch_size=2, heldout_episodes=1)
    monkeypatch.setattr(study.StudyConfig, "__init__", _with_defaults(study.StudyConfig.__init__, tiny))
    assert main(args) == 0
    rows = json.loads((out / "study.json").read_text())
    assert {(r["method"], r["domain"], r["region"]) for r in rows} == {
        (m, d, g) for m in ("target-only", "cotrain-ot") for d in ("real", "sim") for g in ("A", "B")}
    for r in rows:
        assert set(r) == {"method", "seed", "domain", "region", "episodes", "successes", "success_rate", "split",
                          "scene_seeds", "ended_other_side", "steps", "data_hash", "environment_key"}
        assert r["steps"] == 2 and len(r["data_hash"]) == 12 and len(r["environment_key"]) == 12
        assert r["episodes"] == 4 and 0 <= r["successes"] <= 4 and 0 <= r["ended_other_side"] <= 4
        assert r["split"] == "dev" and r["scene_seeds"] == [SPLIT_SCENE_BASE["dev"], SPLIT_SCENE_BASE["dev"] + 4]
    summary = json.loads((out / "study_summary.json").read_text())
    assert summary["split"] == "dev" and summary["training_seeds"] == [0]
    assert {(g["method"], g["region"]) for g in summary["gaps"]} == {(m, g) for m in ("target-only", "cotrain-ot")
                                                                     for g in "AB"}
    offline = {(o["method"], o["seed"]): o for o in summary["offline"]}
    assert 0 <= offline[("cotrain-ot", 0)]["domain_probe_acc"] <= 1
    assert offline[("target-only", 0)]["heldout_real_bc_loss"] > 0 and offline[("target-only", 0)]["ot_loss"] is None
    assert {(e["method"], e["domain"], e["region"]) for e in summary["ends"]} == {
        (r["method"], r["domain"], r["region"]) for r in rows}
    md = (out / "study.md").read_text()
    assert "| target-only |" in md and "One training seed" in md and "Where the episodes end" in md
    assert (out / "study.png").stat().st_size > 1000
    assert (out / "embeddings" / "cotrain-ot.png").is_file()
    # resume: a finished study trains nothing again; a deleted evaluation is redone, the rest kept
    ckpt = out / "runs" / "target-only" / "seed0" / "train_summary.json"
    mtime = ckpt.stat().st_mtime
    (out / "evals" / "cotrain-ot" / "seed0" / "real_B.json").unlink()
    assert main(args) == 0
    assert ckpt.stat().st_mtime == mtime
    assert json.loads((out / "study.json").read_text()) == rows
    # an evaluation kept from before the end side was recorded: its row says None, the ends table skips it
    old = out / "evals" / "cotrain-ot" / "seed0" / "sim_A.json"
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if k != "ended_other_side"}))
    assert main(args) == 0
    again = json.loads((out / "study.json").read_text())
    assert [r["ended_other_side"] for r in again if (r["method"], r["domain"], r["region"]) == ("cotrain-ot", "sim",
                                                                                                 "A")] == [None]
    ends = json.loads((out / "study_summary.json").read_text())["ends"]
    assert ("cotrain-ot", "sim", "A") not in {(e["method"], e["domain"], e["region"]) for e in ends}
    assert ("cotrain-ot", "real", "A") in {(e["method"], e["domain"], e["region"]) for e in ends}
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
    # the test split is another study: its own folder
    with pytest.raises(StudyError, match="other settings \\(split\\)"):
        main([*more, "--split", "test"])


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
    assert StudyConfig().methods == ("target-only", "cotrain", "cotrain-mmd", "cotrain-ot")
    from otplug.bench.study_summary import ALIGNMENT_METHODS

    # every method that adds an alignment loss to co-training gets its gap-closed row
    assert set(ALIGNMENT_METHODS) == {m for m in METHODS if m.startswith("cotrain-")}
    assert StudyConfig().seeds >= 10 and StudyConfig().eval_domains == ("real", "sim")
    docs = (Path(__file__).parents[1] / "docs" / "benchmark.md").read_text()
    for method in METHODS:
        assert f"| `{method}` |" in docs, method  # a row of the methods table
        assert f"``{method}``" in study_mod.__doc__, method
        cfg = ot_config_for(method)
        if cfg is not None:
            load_config(cfg)  # raises on an invalid config


def test_study_data_with_real_demos_over_both_regions(tmp_path):
    """``ensure_data(real_region="all")`` (dev_sweep's coverage check) records the real demos over A and B; the study's
    own A-only data is another stamp, so switching records again instead of reusing the wrong set."""
    pytest.importorskip("lerobot")
    from otplug.bench.env import sample_scene
    from otplug.bench.study import ensure_data

    cfg = StudyConfig(real_episodes=6, sim_episodes=4, heldout_episodes=1)
    both = ensure_data(tmp_path, cfg, real_region="all")
    meta = json.loads((both["real"] / "meta" / "otplug_bench.json").read_text())
    assert both["real"].name == "real_all" and meta["region"] == "all"
    assert {sample_scene(s, "all").region for s in meta["episode_seeds"]} == {"A", "B"}
    only_a = ensure_data(tmp_path, cfg)
    assert only_a["real"].name == "real_A" and not both["real"].exists()  # recorded again, the other set removed
    meta = json.loads((only_a["real"] / "meta" / "otplug_bench.json").read_text())
    assert {sample_scene(s, meta["region"]).region for s in meta["episode_seeds"]} == {"A"}


def test_precision_auto_follows_the_device_and_bf16_trains_with_amp(monkeypatch):
    """Issue #28: --precision auto is bf16 where the training device computes bf16 natively, else fp32; bf16 adds
    lerobot's --policy.use_amp and channels_last weights to every training; a folder of an older study (no precision
    recorded) ran in float32."""
    import otplug.environment as environment
    from otplug.bench.study import policy_args, resolve_precision
    from otplug.bench.study_config import SETTING_DEFAULTS

    monkeypatch.setattr("otplug.bench.launch.cuda_available", lambda: False)
    monkeypatch.setattr(environment, "bf16_support", lambda device="cpu": True)
    assert resolve_precision("auto") == "bf16" and resolve_precision("fp32") == "fp32"
    monkeypatch.setattr(environment, "bf16_support", lambda device="cpu": False)
    assert resolve_precision("auto") == "fp32"
    bf16 = policy_args(StudyConfig(precision="bf16"))
    assert "--policy.use_amp=true" in bf16 and "--ot.memory_format=channels_last" in bf16
    assert not any("use_amp" in a or "memory_format" in a for a in policy_args(StudyConfig()))
    assert SETTING_DEFAULTS["precision"] == "fp32" == StudyConfig().precision
    with pytest.raises(ValueError):
        StudyConfig(precision="fp16")
