"""`otplug train` end to end on tiny datasets: both layouts, resume, errors, OT off loads no OT batch."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lerobot")
pytest.importorskip("accelerate")


CAM = "observation.images.front"
OT_CONFIG = {
    "reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "cost_normalization": "mean",
    "terms": [
        {"type": "image", "name": "img", "src_key": CAM, "weight": 1.0},
        {"type": "embedding", "name": "state", "src_key": "observation.state", "weight": 0.5},
        {"type": "action-slice", "name": "act", "weight": 0.5},
    ],
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from otplug.lerobot.synthetic import make_dataset
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info

    root = tmp_path_factory.mktemp("pair")
    real = make_dataset(root / "real", repo_id="test/real", episode_lengths=(12, 14, 10), image_size=32, seed=1)
    sim = make_dataset(root / "sim", repo_id="test/sim", episode_lengths=(11, 13), image_size=32, seed=2)
    save_pair_info(compute_pair_info(sim, real, key="observation.state"), root / "pair_info.json")
    (root / "ot.json").write_text(json.dumps(OT_CONFIG))
    return root


def _args(pair, out, steps=3, extra=()):
    return [
        "--dataset.repo_id=test/real", f"--dataset.root={pair / 'real'}", "--dataset.video_backend=pyav",
        "--policy.type=act", "--policy.device=cpu", "--policy.pretrained_backbone_weights=null",
        "--policy.push_to_hub=false", "--policy.dim_model=32", "--policy.n_heads=2", "--policy.dim_feedforward=64",
        "--policy.n_encoder_layers=1", "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=5",
        "--policy.n_action_steps=5", "--num_workers=0", "--batch_size=4", "--log_freq=1", "--save_freq=2",
        "--seed=5", "--wandb.enable=false", f"--output_dir={out}", f"--steps={steps}",
        "--ot.source_repo_id=test/sim", f"--ot.source_root={pair / 'sim'}", f"--ot.pair_info={pair / 'pair_info.json'}",
        f"--ot.config={pair / 'ot.json'}", "--ot.batch_size=3", "--ot.plan_every=1", "--ot.sinks=[plan-heatmap]",
        *extra,
    ]


def _rows(out, with_probe=False):
    """metrics.jsonl rows; the step-0 row of the alignment diagnostics (diag/*) only when asked."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows if with_probe else [r for r in rows if r["step"] > 0]


@pytest.mark.parametrize("layout", ["single-pass", "separate"])
def test_train_with_ot(pair, tmp_path, layout):
    from otplug.lerobot.train import main

    out = tmp_path / "run"
    assert main(_args(pair, out, extra=[f"--ot.layout={layout}"])) == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["ot_loss"] > 0 and r["ot_pi_sum"] > 0 and "ot_cost/img" in r and "bc_loss" in r
        assert r["loss"] == pytest.approx(r["bc_loss"] + 0.1 * r["ot_loss"], rel=1e-4)
    probe = _rows(out, with_probe=True)[0]
    assert probe["step"] == 0 and probe["diag/embed_scale_ratio"] == 1.0 and 0 <= probe["diag/domain_probe_acc"] <= 1
    assert "diag/embed_scale_ratio" in rows[-1] and (out / "embeddings" / "step_000003.npz").is_file()
    # both layouts encode the image term with gradients; single-pass reads it from the BC forward (no fallback)
    assert all(r["ot_capture_fallback"] == 0 for r in rows)
    assert all(r["skipped_steps"] == 0 for r in rows)
    assert sorted(p.name for p in (out / "plans").glob("*.png")) == [f"plan_00000{i}.png" for i in (1, 2, 3)]
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "train_config.json").exists()
    assert json.loads((ckpt / "train_config.json").read_text())["ot"]["layout"] == layout
    # run_info keeps the config as parsed (native form, every setting): no reader has to guess the file's format
    from otplug.config import dump_config, load_config

    info = json.loads((out / "run_info.json").read_text())
    assert info["ot_config"] == dump_config(load_config(pair / "ot.json"))
    assert json.loads(info["ot_config_text"]) == OT_CONFIG


def test_ot_disabled_loads_no_ot_batch(pair, tmp_path, monkeypatch):
    import otplug.lerobot.pair_dataset as pd
    from otplug.lerobot.train import main

    def boom(*a, **k):
        raise AssertionError("OT data touched with OT disabled")

    monkeypatch.setattr(pd, "OTPairDataset", boom)
    monkeypatch.setattr(pd, "make_source_dataset", boom)
    out = tmp_path / "off"
    assert main(_args(pair, out, steps=1, extra=["--ot.lambda_ot=0"])) == 0
    assert "ot_loss" not in _rows(out)[0]


@pytest.mark.slow
def test_resume_continues_exactly(pair, tmp_path):
    """An interrupted run resumed from its checkpoint reproduces the uninterrupted run (OT off: exact BC data)."""
    from otplug.lerobot.train import main

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_args(pair, full, steps=4, extra=["--ot.enabled=false"])) == 0
    assert main(_args(pair, cut, steps=2, extra=["--ot.enabled=false"])) == 0
    assert main(["--resume", "--output-dir", str(cut), "--steps", "4"]) == 0
    a, b = _rows(full), _rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert rb["bc_loss"] == pytest.approx(ra["bc_loss"], rel=1e-5)
    assert (cut / "checkpoints" / "000004").is_dir() or (cut / "checkpoints" / "4").is_dir()


def test_resume_with_ot(pair, tmp_path):
    from otplug.lerobot.train import main

    out = tmp_path / "r"
    assert main(_args(pair, out, steps=2)) == 0
    assert main(["--resume", "--output-dir", str(out), "--steps=3"]) == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["ot_loss"] > 0


def test_errors_are_one_clear_message(pair, tmp_path, capsys):
    from otplug.cli import main as cli

    out = tmp_path / "e"
    cases = [
        (["--ot.pair_info=/nope/pair.json"], "--ot.pair_info: no such file"),
        (["--ot.layout=singlepass"], "--ot.layout: must be one of"),
        (["--ot.lamda_ot=0.1"], "invalid training options"),
    ]
    for extra, msg in cases:
        rc = cli(["train", *_args(pair, out, steps=1, extra=extra)])
        err = capsys.readouterr().err
        assert rc == 2, extra
        assert msg in err and "Traceback" not in err, err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"terms": [{"type": "imgae", "src_key": CAM}]}))
    rc = cli(["train", *_args(pair, out, steps=1, extra=[f"--ot.config={bad}"])])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean 'image'" in err and "Traceback" not in err
    missing = tmp_path / "missing_key.json"
    missing.write_text(json.dumps({"terms": [{"type": "label", "src_key": "observation.velocity"}]}))
    rc = cli(["train", *_args(pair, tmp_path / "e2", steps=1, extra=[f"--ot.config={missing}"])])
    err = capsys.readouterr().err
    assert rc == 2 and "observation.velocity" in err and "Traceback" not in err
    rc = cli(["train", "--resume", "--output-dir", str(tmp_path / "never")])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from otplug.cli import main as cli

    out = tmp_path / "demo"
    assert cli(["train", "--demo", "--steps", "3", "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "BC loss" in text and "with OT" in text and "baseline (no OT)" in text
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and all("ot_pi_sum" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["embedding_alignment"]) == {"init", "baseline (no OT)", "with OT"}
    assert list((out / "plans").glob("*.png"))
    assert (out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").exists()
    # a second demo run replaces the previous demo output
    assert cli(["train", "--demo", "--steps", "1", "--no-baseline", "--output-dir", str(out)]) == 0


def test_failed_download_is_one_clear_message(pair, tmp_path, capsys, monkeypatch):
    import urllib.error

    from otplug.cli import main as cli
    from otplug.lerobot.train import cli as train_cli

    def offline(cfg, accelerator=None, **kw):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(train_cli, "train", offline)
    rc = cli(["train", *_args(pair, tmp_path / "net", steps=1)])
    err = capsys.readouterr().err
    assert rc == 2 and "pretrained_backbone_weights=null" in err and "Traceback" not in err


@pytest.mark.parametrize("layout", ["single-pass", "separate"])
def test_ot_rows_carry_pad_masks(pair, tmp_path, monkeypatch, layout):
    """The action-slice term excludes padded steps, so the OT rows must keep ``action_is_pad`` in both layouts
    (single-pass once dropped it: padded action steps silently counted in the cost)."""
    from otplug.lerobot.train import main, ot_step

    seen = []
    real = ot_step.scoped_ot

    def spy(ot_loss, src, tgt, encoder=None, **kw):
        seen.append((set(src), set(tgt)))
        return real(ot_loss, src, tgt, encoder=encoder, **kw)

    monkeypatch.setattr(ot_step, "scoped_ot", spy)
    assert main(_args(pair, tmp_path / "pad", steps=2, extra=[f"--ot.layout={layout}"])) == 0
    assert seen
    for src_keys, tgt_keys in seen:
        assert "action_is_pad" in src_keys and "action_is_pad" in tgt_keys


def test_ema_target_encoder_trains_saves_and_resumes(pair, tmp_path):
    """stopgrad_encoder = 'ema': the target side's features come from an EMA copy of the policy, updated after
    every step, saved with the checkpoint and restored on resume."""
    import torch

    from otplug.lerobot.train import main

    cfg = tmp_path / "ema.json"
    cfg.write_text(json.dumps({"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "cost_normalization": "mean",
                               "ema_decay": 0.9, "terms": [
                                   {"type": "image", "name": "img", "src_key": CAM, "embed_norm": "l2",
                                    "grad": "source", "stopgrad_encoder": "ema"}]}))
    out = tmp_path / "ema"
    assert main(_args(pair, out, steps=2, extra=[f"--ot.config={cfg}"])) == 0
    state = out / "checkpoints" / "last" / "training_state" / "otplug_ema.pt"
    assert state.is_file()
    saved = torch.load(state)
    assert saved and all(torch.isfinite(v).all() for v in saved.values() if torch.is_tensor(v) and v.is_floating_point())
    assert main(["--resume", "--output-dir", str(out), "--steps", "3"]) == 0
    assert [r["step"] for r in _rows(out)] == [1, 2, 3] and _rows(out)[-1]["ot_loss"] >= 0


def test_ema_target_encoder_with_global_scope_is_refused_before_training(pair, tmp_path, capsys, monkeypatch):
    """An EMA target encoder exists per process, so --ot.scope=global cannot use it: the CLI says so in one line
    naming both fields (exit code 2) while validating the options -- no data opened, no run folder written."""
    from otplug.cli import main as cli
    from otplug.lerobot.train import cli as train_cli

    def never(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(train_cli, "train", never)
    cfg = tmp_path / "ema.json"
    cfg.write_text(json.dumps({"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "terms": [
        {"type": "image", "name": "img", "src_key": CAM, "grad": "source", "stopgrad_encoder": "ema"}]}))
    out = tmp_path / "ema_global"
    rc = cli(["train", *_args(pair, out, steps=1, extra=[f"--ot.config={cfg}", "--ot.scope=global"])])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    line = next(x for x in err.splitlines() if "--ot.scope" in x)
    assert "--ot.scope=global" in line and "stopgrad_encoder = 'ema'" in line and "'img'" in line
    assert not out.exists()


def test_scale_anchor_reference_is_saved_and_resumed(pair, tmp_path):
    """scale_anchor's reference scale s0 is the term's state: saved with each checkpoint, and the resumed run
    measures its drift against the first run's s0 (not against its own first batch)."""
    from otplug.lerobot.train import main

    cfg = tmp_path / "anchor.json"
    cfg.write_text(json.dumps({"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "cost_normalization": "mean",
                               "terms": [{"type": "image", "name": "img", "src_key": CAM, "embed_norm": "l2",
                                          "scale_anchor": 1.0}]}))
    out = tmp_path / "anchor"
    assert main(_args(pair, out, steps=2, extra=[f"--ot.config={cfg}"])) == 0
    saved = json.loads((out / "checkpoints" / "last" / "training_state" / "otplug_terms.json").read_text())
    first = _rows(out)[0]
    assert first["ot_scale_drift/img"] == pytest.approx(1.0)
    assert saved["img"]["scale_ref"] == pytest.approx(first["ot_embed_scale/img"], rel=1e-5)
    (out / "checkpoints" / "last" / "training_state" / "otplug_terms.json").write_text(
        json.dumps({"img": {"scale_ref": saved["img"]["scale_ref"] * 4}}))
    assert main(["--resume", "--output-dir", str(out), "--steps", "3"]) == 0
    last = _rows(out)[-1]
    assert last["step"] == 3 and last["ot_scale_drift/img"] == pytest.approx(last["ot_embed_scale/img"]
                                                                           / (4 * saved["img"]["scale_ref"]), rel=1e-4)


def test_diagnostics_do_not_change_training(pair, tmp_path):
    """The probe is built under a forked RNG and measured in eval mode without gradients: a run with
    diagnostics trains exactly like one without (same losses, bit for bit)."""
    from otplug.lerobot.train import main

    a, b = tmp_path / "with", tmp_path / "without"
    assert main(_args(pair, a, steps=3, extra=["--ot.diag_every=1"])) == 0
    assert main(_args(pair, b, steps=3, extra=["--ot.diag_every=0"])) == 0
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb, strict=True):
        assert (x["bc_loss"], x["ot_loss"], x["grad_norm"]) == (y["bc_loss"], y["ot_loss"], y["grad_norm"])
    assert "diag/retrieval_at_1" in ra[1] and not any(k.startswith("diag/") for k in rb[1])


def test_overflowing_lambda_is_named_and_nothing_is_saved(pair, tmp_path, capsys):
    from otplug.cli import main as cli

    out = tmp_path / "big"
    rc = cli(["train", *_args(pair, out, steps=2, extra=["--ot.lambda_ot=1e308"])])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "--ot.lambda_ot = 1e+308" in err, err
    assert "training stopped at step 1" in err
    assert not (out / "checkpoints").exists()  # nothing non-finite was saved


def _checkpoint_steps(out):
    root = out / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("extra_wait", [0.0, 0.7])
def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(pair, tmp_path, extra_wait):
    """A real kill (SIGKILL, no cleanup) some time after the first checkpoint, then `--resume`: training ends at
    the asked step, metrics.jsonl holds every step exactly once, and every saved checkpoint loads with finite
    weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    out = tmp_path / "killed"
    args = _args(pair, out, steps=40, extra=["--save_freq=3"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "otplug", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not _checkpoint_steps(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(extra_wait)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = _checkpoint_steps(out)
    assert killed_at, "the run was killed before its first checkpoint"

    from otplug.lerobot.train import main

    assert main(["--resume", "--output-dir", str(out), "--steps", "12"]) == 0
    steps = [r["step"] for r in _rows(out)]
    assert steps == list(range(1, 13)), steps
    for step in _checkpoint_steps(out):
        weights = load_file(out / "checkpoints" / f"{step:06d}" / "pretrained_model" / "model.safetensors")
        assert all(bool(w.isfinite().all()) for w in weights.values())
    assert (out / "checkpoints" / "last").resolve().name == f"{12:06d}"


def test_balanced_plugin_solver_and_plugin_sink_options_in_train(pair, tmp_path, otplug_registry, recwarn):
    """A balanced solver plugin written from docs/plugins.md (problem="balanced", marginals = "exact") trains with
    no warning, its marginals checked and logged every step; a plugin sink gets its options from
    --ot.sink_options."""
    import math
    from pathlib import Path

    import torch

    import otplug
    from otplug.lerobot.train import main

    class BalancedLog:
        def __init__(self, options):
            self.max_iter = 5000

        def solve(self, M, *, reg, reg_m, heuristic=False, a=None, b=None):
            assert all(math.isinf(t) for t in reg_m)
            Me = M.double() / reg
            n, m = M.shape
            log_a = torch.full((n,), -math.log(n), dtype=Me.dtype)
            log_b = torch.full((m,), -math.log(m), dtype=Me.dtype)
            f, g, err, it = torch.zeros(n, dtype=Me.dtype), torch.zeros(m, dtype=Me.dtype), math.inf, 0
            for it in range(1, self.max_iter + 1):
                f = log_a - torch.logsumexp(g[None, :] - Me, dim=1)
                g = log_b - torch.logsumexp(f[:, None] - Me, dim=0)
                err = float((torch.exp(f[:, None] + g[None, :] - Me).sum(1) - 1 / n).abs().sum())
                if err < 1e-10:
                    break
            return otplug.SolveResult(plan=torch.exp(f[:, None] + g[None, :] - Me), iterations=it,
                                      converged=err < 1e-10, error=err)

    class RowsSink:
        def __init__(self, run_dir, filename="rows.txt"):
            self.path = Path(run_dir) / filename

        def log(self, step, metrics):
            with open(self.path, "a") as fh:
                fh.write(f"{step}\n")

    class Plugin:
        @otplug.hookimpl
        def otplug_solvers(self):
            return [otplug.Solver(name="balanced-log", factory=BalancedLog, problem="balanced", summary="test")]

        @otplug.hookimpl
        def otplug_metric_sinks(self):
            return [otplug.MetricSink(name="rows", factory=RowsSink, summary="test")]

    otplug_registry.register(Plugin(), name="balanced-plugin")
    cfg = tmp_path / "balanced.json"
    cfg.write_text(json.dumps({**{k: v for k, v in OT_CONFIG.items() if not k.startswith("tau")},
                               "solver": "balanced-log", "marginals": "exact"}))
    out = tmp_path / "balanced"
    assert main(_args(pair, out, steps=2, extra=[f"--ot.config={cfg}", "--ot.sinks=[rows]",
                                                 '--ot.sink_options={"rows": {"filename": "steps.txt"}}'])) == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["ot_solver/converged"] == 1.0 and r["ot_pi_sum"] == pytest.approx(1.0, rel=1e-5)
        assert r["ot_marginal_error/src"] <= r["ot_marginal_tol"] and r["ot_marginal_error/tgt"] <= r["ot_marginal_tol"]
        assert "ot_mass_excess" not in r and r["ot_collapsed"] == 0
    assert not [w for w in recwarn if issubclass(w.category, (otplug.OTSolverWarning, otplug.OTCollapseWarning))]
    assert (out / "steps.txt").read_text().split() == ["0", "1", "2"]  # 0: the diagnostics' probe row
    # the same plugin with relaxed marginals is one config error naming the field and the solver
    cfg.write_text(json.dumps({**OT_CONFIG, "solver": "balanced-log"}))
    with pytest.raises(otplug.ConfigError, match="solver 'balanced-log'"):
        otplug.load_config(cfg)


def test_sink_options_errors_name_the_option_and_the_sink():
    from otplug.errors import OtplugError
    from otplug.lerobot.train.config import parse_sink_options

    assert parse_sink_options({"csv": {"filename": "m.csv"}}, ["csv"]) == {"csv": {"filename": "m.csv"}}
    assert parse_sink_options('{"csv": {"every": 2}}', ["csv"]) == {"csv": {"every": 2}}
    with pytest.raises(OtplugError, match=r"--ot.sink_options gives options for sink 'csv', which is not in --ot"):
        parse_sink_options({"csv": {}}, ["console"])
    with pytest.raises(OtplugError, match=r"--ot.sink_options\['csv'\] must be an object of keyword options"):
        parse_sink_options({"csv": 3}, ["csv"])
    with pytest.raises(OtplugError, match=r"--ot.sink_options must be a JSON object"):
        parse_sink_options("{csv", ["csv"])


def _train_in_child(args):
    """``otplug train`` in a fresh process: accelerate's state is a per-process singleton, so a bf16 run cannot follow
    a float32 one in the test process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "otplug", "train", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_bf16_channels_last_trains_saves_and_resumes_exactly(pair, tmp_path):
    """Issue #28: --policy.use_amp (bf16 autocast on the CPU) with --ot.memory_format=channels_last trains 20 steps
    with finite metrics and checkpoints (safetensors refuses the channels_last optimizer state unless it is packed);
    a run stopped at its step-4 checkpoint and resumed reproduces the uninterrupted run (OT off, as
    test_resume_continues_exactly: exact BC data within the first epoch)."""
    import math

    bf16 = ["--policy.use_amp=true", "--ot.memory_format=channels_last", "--save_freq=10", "--ot.plan_every=10"]
    run = tmp_path / "run"
    _train_in_child(_args(pair, run, steps=20, extra=bf16))
    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert all(math.isfinite(r[k]) for r in rows for k in ("bc_loss", "ot_loss", "grad_norm"))
    info = json.loads((run / "run_info.json").read_text())
    assert info["precision"]["mixed_precision"] == "bf16" and info["precision"]["memory_format"] == "channels_last"
    assert info["precision"]["path"] == "cpu-bf16+channels_last"
    assert info["environment"]["packages"]["torch"] and len(info["environment_key"]) == 12

    off = [*bf16[:2], "--ot.enabled=false", "--save_freq=4"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    _train_in_child(_args(pair, full, steps=7, extra=off))
    _train_in_child(_args(pair, cut, steps=4, extra=off))
    _train_in_child(["--resume", "--output-dir", str(cut), "--steps", "7"])
    a, b = _rows(full), _rows(cut)
    assert [r["step"] for r in b] == list(range(1, 8))
    for ra, rb in zip(a, b, strict=True):
        assert rb["bc_loss"] == pytest.approx(ra["bc_loss"], rel=1e-5), ra["step"]


@pytest.mark.parametrize("layout", ["single-pass", "separate"])
def test_joint_term_trains_in_both_layouts(pair, tmp_path, layout):
    """The joint term (issue #29) end to end: the target rows carry the policy's inputs, the adapter predicts their
    chunk, the loss is finite and non-zero, and the run saves."""
    import math

    from otplug.lerobot.train import main

    cfg = {"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "cost_normalization": "mean",
           "terms": [{"type": "joint", "name": "j", "src_key": CAM, "weight_embed": 1.0, "weight_label": 1.0}]}
    path = tmp_path / "joint.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(_args(pair, out, steps=3, extra=[f"--ot.config={path}", f"--ot.layout={layout}"])) == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["ot_loss"]) and r["ot_loss"] > 0 and r["ot_cost/j"] > 0 for r in rows)
