"""The target pool (``--ot.target_pool``, issue #29): real frames the OT loss sees and the BC loss never does.

The pool file's errors, the block-diagonal plan against an independent computation (POT), the draws as a function of
the step, the pool's rows outside the BC loss (loss and gradient equal with and without them), an action-less dataset
accepted for the pool and refused for BC, a term reading real actions refused with a pool, check-config, the
study's goal-blind pool on scenes of its own, and a resume after SIGKILL with identical metrics (slow).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import otplug
from otplug.errors import ConfigError, OtplugError

CAM = "observation.images.front"
IMAGE_OT = {"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "heuristic": True, "cost_normalization": "mean",
            "terms": [{"type": "image", "name": "img", "src_key": CAM, "weight": 1.0}]}


# ---------------------------------------------------------------------------------------------------------------------
# the pool file


@pytest.mark.parametrize(("text", "where", "says"), [
    ('[[pool]]\nroot = "p"\npairng = "none"\n', "pool[0].pairng", "did you mean 'pairing'"),
    ('[[pool]]\nroot = "p"\npairing = "nearest"\n', "pool[0].pairing", "must be one of none, dtw"),
    ('[[pool]]\nroot = "p"\npairing = "dtw"\n', "pool[0].pair_info", "pairing = 'dtw' needs the pair_info"),
    ('[[pool]]\nroot = "p"\npair_info = "x.json"\n', "pool[0].pair_info", "only read with pairing = 'dtw'"),
    ('[[pool]]\nroot = "nowhere"\n', "pool[0].root", "no such directory"),
    ('[[pool]]\nroot = "p"\nweight = 0\n', "pool[0].weight", "must be a finite number > 0"),
    ('[[pool]]\nroot = "p"\n[[pool]]\nroot = "p"\n', "pool", "used by more than one pool dataset"),
    ('[[pools]]\nroot = "p"\n', "pools", "did you mean 'pool'"),
])
def test_pool_file_mistakes_are_named(tmp_path, text, where, says):
    from otplug.lerobot.pool import read_pool_file

    (tmp_path / "p").mkdir()
    path = tmp_path / "pool.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        read_pool_file(path)
    assert f"{where}:" in str(exc.value) and says in str(exc.value)


def test_pool_file_resolves_paths_and_defaults(tmp_path):
    from otplug.lerobot.pool import read_pool_file

    (tmp_path / "logs").mkdir()
    (tmp_path / "pool.toml").write_text('[[pool]]\nroot = "logs"\nweight = 2\n'
                                        'rename_map = { "observation.images.cam" = "observation.images.front" }\n')
    (spec,) = read_pool_file(tmp_path / "pool.toml")
    assert spec.root == str(tmp_path / "logs") and spec.name == "logs" and spec.weight == 2.0
    assert spec.pairing == "none" and spec.pair_info is None
    assert spec.rename_map == {"observation.images.cam": "observation.images.front"}


# ---------------------------------------------------------------------------------------------------------------------
# the block-diagonal plan


def _label_loss(heuristic: bool) -> otplug.OTLoss:
    return otplug.OTLoss(otplug.load_config({
        "reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "heuristic": heuristic, "cost_normalization": "mean",
        "terms": [{"type": "label", "name": "s", "src_key": "observation.state", "weight": 1.0}]}))


def _states(n: int, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    return ({"observation.state": torch.randn(n, 3, generator=g, dtype=torch.float64)},
            {"observation.state": torch.randn(n, 3, generator=g, dtype=torch.float64)})


def test_block_plan_equals_an_independent_computation():
    """Pairs under the diagonal prior, pool rows under the product prior: the plan of the problem with marginals 1/n
    and reference blockdiag(I/n, 11^T/(n q)) -- the paired block's closed form by hand and the pool block by POT's
    own unbalanced Sinkhorn, each scaled by its share of the rows; zero between the blocks."""
    ot_pot = pytest.importorskip("ot")
    n, p = 10, 6
    q = n - p
    src, tgt = _states(n)
    res = _label_loss(True)(src, tgt, paired=p)
    M = res.cost.detach().double()
    reg, tau = 0.05, 1.0
    want = torch.zeros(n, n, dtype=torch.float64)
    d = torch.diagonal(M[:p, :p])
    log_pp = (reg * math.log(1 / p) + 2 * tau * math.log(1 / p) - d) / (reg + 2 * tau)
    want[:p, :p] = torch.diag(torch.exp(log_pp)) * (p / n)
    a = np.full(q, 1 / q)
    pool = ot_pot.unbalanced.sinkhorn_unbalanced(a, a, M[p:, p:].numpy(), reg, tau, numItermax=100_000,
                                                 stopThr=1e-13)
    want[p:, p:] = torch.as_tensor(pool) * (q / n)
    got = res.plan.double()
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), (got - want).abs().max()
    assert float(res.loss) == pytest.approx(float((want * M).sum()), rel=1e-5)
    assert res.metrics["ot_unpaired_rows"] == q
    assert res.metrics["ot_unpaired_mass"] == pytest.approx(float(want[p:].sum() / want.sum()), rel=1e-5)
    assert res.metrics["ot_solver/converged"] == 1.0


def test_all_rows_paired_is_the_plain_loss_and_no_prior_ignores_the_blocks():
    src, tgt = _states(8, seed=1)
    for heuristic in (True, False):
        ot = _label_loss(heuristic)
        plain = ot(src, tgt)
        assert torch.allclose(ot(src, tgt, paired=8).plan, plain.plan)
        if not heuristic:  # one problem over every row: the pool mark only adds metrics
            assert torch.allclose(ot(src, tgt, paired=3).plan, plain.plan)
    with pytest.raises(OtplugError, match="paired must be an integer in \\[0, 8\\]"):
        _label_loss(True)(src, tgt, paired=9)


# ---------------------------------------------------------------------------------------------------------------------
# draws as a function of the step


def test_pool_batches_are_a_function_of_the_step():
    from otplug.lerobot.pool import PoolBatches

    full = PoolBatches([5, 30], [1.0, 3.0], 4, seed=11)
    it = iter(full)
    run = [next(it) for _ in range(12)]
    resumed = iter(PoolBatches([5, 30], [1.0, 3.0], 4, seed=11, start_step=7))
    assert [next(resumed) for _ in range(5)] == run[7:]
    ks = np.array([k for b in (full.batch(s) for s in range(2000)) for k, _, _ in b])
    assert (ks == 1).mean() == pytest.approx(0.75, abs=0.02)  # datasets by weight
    assert all(0 <= i < (5, 30)[k] for b in run for k, i, _ in b)


def test_pair_loader_keeps_its_order_and_fast_forwards_exactly():
    """The pair loader draws what torch's RandomSampler drew (today's runs keep their pairs), and a loader
    fast-forwarded to step s yields the uninterrupted loader's batches from s on, across epochs."""
    import itertools

    from otplug.lerobot.pair_dataset import EpochSampler, cycle_epochs, fast_forward

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 23

        def __getitem__(self, i):
            return i

        def set_epoch(self, e):
            pass

    def stream(sampler_kind, start=0, k=30):
        g = torch.Generator().manual_seed(7)
        if sampler_kind == "torch":
            dl = torch.utils.data.DataLoader(Rows(), batch_size=4, shuffle=True, generator=g, drop_last=True)
            epoch = 0
        else:
            dl = torch.utils.data.DataLoader(Rows(), batch_size=4, sampler=EpochSampler(23, g), generator=g,
                                             drop_last=True)
            epoch = fast_forward(dl, start)
        return [b.tolist() for b in itertools.islice(cycle_epochs(Rows(), dl, epoch), k - start)]

    ref = stream("torch")
    assert stream("ours") == ref
    for s in (1, 5, 6, 13, 29):
        assert stream("ours", start=s) == ref[s:]


# ---------------------------------------------------------------------------------------------------------------------
# training with a pool


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pytest.importorskip("lerobot")
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info
    from otplug.lerobot.synthetic import make_dataset

    root = tmp_path_factory.mktemp("pool")
    real = make_dataset(root / "real", repo_id="test/real", episode_lengths=(12, 14, 10), image_size=32, seed=1)
    sim = make_dataset(root / "sim", repo_id="test/sim", episode_lengths=(11, 13), image_size=32, seed=2)
    make_dataset(root / "play", repo_id="test/play", episode_lengths=(9, 8), image_size=32, seed=3, action_dim=0)
    save_pair_info(compute_pair_info(sim, real, key="observation.state"), root / "pair_info.json")
    (root / "img.json").write_text(json.dumps(IMAGE_OT))
    (root / "act.json").write_text(json.dumps({**IMAGE_OT, "terms": [
        *IMAGE_OT["terms"], {"type": "action-slice", "name": "act", "weight": 0.5}]}))
    (root / "joint.json").write_text(json.dumps({**IMAGE_OT, "terms": [
        *IMAGE_OT["terms"], {"type": "joint", "name": "joint", "src_key": CAM, "weight": 0.5, "weight_embed": 0.0}]}))
    (root / "pool.toml").write_text('[[pool]]\nname = "play"\nroot = "play"\n')
    return root


def _args(d, out, steps, extra=()):
    return [
        "--dataset.repo_id=test/real", f"--dataset.root={d / 'real'}", "--dataset.video_backend=pyav",
        "--policy.type=act", "--policy.device=cpu", "--policy.pretrained_backbone_weights=null",
        "--policy.push_to_hub=false", "--policy.dim_model=32", "--policy.n_heads=2", "--policy.dim_feedforward=64",
        "--policy.n_encoder_layers=1", "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=5",
        "--policy.n_action_steps=5", "--num_workers=0", "--batch_size=4", "--log_freq=1", "--save_freq=100",
        "--seed=5", "--wandb.enable=false", f"--output_dir={out}", f"--steps={steps}",
        "--ot.source_repo_id=test/sim", f"--ot.source_root={d / 'sim'}", f"--ot.pair_info={d / 'pair_info.json'}",
        f"--ot.config={d / 'img.json'}", "--ot.sinks=[]", *extra,
    ]


def _rows(out):
    return [r for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()) if r["step"] > 0]


def test_pool_rows_never_reach_the_bc_loss(data, tmp_path):
    """The same run with 2 pairs + 2 pool rows per OT batch and with the 2 pairs alone (OT weight 1e-30, so only BC
    moves the weights): BC loss and gradient norm agree at every step -- the pool rows are in neither -- while
    the first run's OT loss did see them."""
    from otplug.lerobot.train import main

    a, b = tmp_path / "pool", tmp_path / "nopool"
    tiny = ["--ot.lambda_ot=1e-30"]
    assert main(_args(data, a, 3, [*tiny, "--ot.batch_size=4", f"--ot.target_pool={data / 'pool.toml'}"])) == 0
    assert main(_args(data, b, 3, [*tiny, "--ot.batch_size=2"])) == 0
    ra, rb = _rows(a), _rows(b)
    for x, y in zip(ra, rb, strict=True):
        assert x["bc_loss"] == pytest.approx(y["bc_loss"], rel=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
        assert x["ot_pool_rows"] == 2 and 0 < x["ot_pool_mass"] < 1 and "ot_pool_rows" not in y
    info = json.loads((a / "run_info.json").read_text())
    assert info["target_pool"]["rows_per_step"] == 2 and info["target_pool"]["paired_rows_per_step"] == 2
    assert info["target_pool"]["datasets"][0]["name"] == "play"


@pytest.mark.parametrize("layout", ["single-pass", "separate"])
def test_joint_term_trains_on_an_action_less_pool(data, tmp_path, layout):
    from otplug.lerobot.train import main

    out = tmp_path / layout
    assert main(_args(data, out, 2, ["--ot.batch_size=4", f"--ot.target_pool={data / 'pool.toml'}",
                                     f"--ot.config={data / 'joint.json'}", f"--ot.layout={layout}"])) == 0
    for r in _rows(out):
        assert math.isfinite(r["ot_loss"]) and r["ot_pool_rows"] == 2 and "ot_cost/joint" in r


def test_a_dtw_paired_pool_trains_and_its_rows_come_first(data, tmp_path, capsys):
    """pairing = "dtw": `otplug pair` runs over the action-less pool; its rows are pairs (diagonal prior), placed
    before any unpaired pool row, and counted as paired by the loss."""
    from otplug.cli import main as cli
    from otplug.lerobot.pool import PoolPairs, collate_pool, open_pool, read_pool_file
    from otplug.lerobot.train import main

    assert cli(["pair", "--target", str(data / "play"), "--source", str(data / "sim"), "--key", "observation.state",
                "--out", str(tmp_path / "pool_pairs.json")]) == 0
    capsys.readouterr()
    (tmp_path / "pool.toml").write_text(
        f'[[pool]]\nname = "play_dtw"\nroot = "{data / "play"}"\npairing = "dtw"\npair_info = "pool_pairs.json"\n'
        f'[[pool]]\nname = "play_free"\nroot = "{data / "play"}"\n')
    out = tmp_path / "run"
    assert main(_args(data, out, 2, ["--ot.batch_size=6", f"--ot.target_pool={tmp_path / 'pool.toml'}"])) == 0
    rows = _rows(out)
    assert all(r["ot_pool_rows"] == 3 and r["ot_unpaired_rows"] <= 3 for r in rows)
    assert any(r["ot_unpaired_rows"] < 3 for r in rows)  # some pool rows were DTW pairs (diagonal prior)
    # the loader's batches: DTW-paired pool rows first, each with its DTW partner from the source
    from otplug.lerobot.datasets import open_dataset

    real = open_dataset("test/real", data / "real")
    specs = read_pool_file(tmp_path / "pool.toml")
    pools = open_pool(specs, like=real)
    pairs = PoolPairs(pools, specs, [open_dataset("test/sim", data / "sim")], [1.0], seed=3)
    items = [pairs[(k, i, 0)] for k, i in ((1, 0), (0, 2), (1, 5), (0, 4))]
    src, tgt, paired = collate_pool(items)
    assert paired == 2 and [it["paired"] for it in items] == [False, True, False, True]
    assert tgt["index"].tolist()[:2] == [items[1]["tgt"]["index"].item(), items[3]["tgt"]["index"].item()]


@pytest.mark.parametrize(("extra", "says"), [
    (["--dataset.repo_id=test/play", "--ot.enabled=false"],
     "has no 'action' feature (features: episode_index"),
    (["--ot.batch_size=4", "--ot.target_pool={pool}", "--ot.config={act}"],
     "OT term 'act' reads ['action'] on the target side, which target pool dataset 'play'"),
    (["--ot.batch_size=4", "--ot.target_pool={pool}", "--ot.pool_share=0.1"],
     "--ot.pool_share=0.1 of --ot.batch_size=4 gives 0 pool row(s)"),
    (["--ot.batch_size=4", "--ot.target_pool={pool}", "--ot.cotrain_only=true"],
     "--ot.target_pool: pool frames only enter the OT loss"),
])
def test_pool_mistakes_are_one_line(data, tmp_path, capsys, extra, says):
    from otplug.cli import main as cli

    extra = [e.format(pool=data / "pool.toml", act=data / "act.json") for e in extra]
    args = _args(data, tmp_path / "e", 1, extra)
    if "--dataset.repo_id=test/play" in extra:
        args = [a for a in args if not a.startswith(("--dataset.root", "--dataset.repo_id=test/real"))]
        args.append(f"--dataset.root={data / 'play'}")
    assert cli(["train", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("otplug: error")]) == 1


def test_check_config_reads_the_pool(data, capsys):
    from otplug.cli import main as cli

    assert cli(["check-config", str(data / "img.json"), "-q", "--dataset", str(data / "real"), "--target-pool",
                str(data / "pool.toml")]) == 0
    assert "target pool dataset 'play'" in capsys.readouterr().out
    assert cli(["check-config", str(data / "act.json"), "-q", "--dataset", str(data / "real"), "--target-pool",
                str(data / "pool.toml")]) == 2
    err = capsys.readouterr().err
    assert "term 'act' reads ['action'] on the target side" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_run_with_a_pool_resumes_after_sigkill_with_identical_metrics(data, tmp_path):
    """SIGKILL after a checkpoint, ``--resume``: every metric of the resumed steps equals the uninterrupted run's
    (pairs, pool rows and their sim partners are functions of the step)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from otplug.lerobot.train import main

    pool = [f"--ot.target_pool={data / 'pool.toml'}", "--ot.batch_size=4", "--save_freq=2"]
    ref = tmp_path / "ref"
    assert main(_args(data, ref, 8, pool)) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "otplug", "train", *_args(data, out, 40, pool)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = out / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert killed_at < 8, "the run went past the compared steps before the kill"
    assert main(["--resume", "--output-dir", str(out), "--steps", "8"]) == 0
    a, b = _rows(ref), _rows(out)
    assert [r["step"] for r in b] == list(range(1, 9))
    keys = ("bc_loss", "ot_loss", "grad_norm", "ot_pool_mass", "ot_pi_sum")
    for x, y in zip(a, b, strict=True):
        for k in keys:
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-9), (x["step"], k)


# ---------------------------------------------------------------------------------------------------------------------
# the study's pool


def test_the_study_pool_scenes_are_disjoint_from_dev_test_and_the_demos():
    from otplug.bench.env import sample_scene
    from otplug.bench.record import episode_seeds
    from otplug.bench.study import POOL_SCENE_OFFSET
    from otplug.bench.study_config import SPLIT_SCENE_BASE, SPLIT_SCENE_SPAN, StudyConfig

    cfg = StudyConfig()
    pool = set(episode_seeds(cfg.data_seed + POOL_SCENE_OFFSET, cfg.pool_episodes))
    assert len(pool) == cfg.pool_episodes
    for base in SPLIT_SCENE_BASE.values():
        assert not pool & set(range(base, base + SPLIT_SCENE_SPAN))
    demos = (set(episode_seeds(cfg.data_seed, cfg.real_episodes))
             | set(episode_seeds(cfg.data_seed + 1000, cfg.sim_episodes))
             | set(episode_seeds(cfg.data_seed + 50_000, cfg.heldout_episodes)))
    assert not pool & demos
    goals = {tuple(sample_scene(s, "all").goal) for s in pool}
    evals = {tuple(sample_scene(base + e, "all").goal) for base in SPLIT_SCENE_BASE.values() for e in range(200)}
    assert not goals & evals
    sides = {sample_scene(s, "all").region for s in pool}
    assert sides == {"A", "B"}  # the pool covers both regions


def test_record_play_is_goal_blind_and_has_no_actions(tmp_path):
    pytest.importorskip("lerobot")
    from otplug.bench.env import sample_scene
    from otplug.bench.record import play_waypoints, record_play

    res = record_play(tmp_path / "play", n_episodes=3, seed=3, scene_seed=70_000, image_size=16)
    info = json.loads((tmp_path / "play" / "meta" / "info.json").read_text())
    assert "action" not in info["features"] and res.frames == 3 * 40
    # goal-blind: the same seeds with the goals moved give the same states
    seeds = res.episode_seeds
    a = play_waypoints("real", "A", seeds, image_size=16)
    b = play_waypoints("real", "B", seeds, image_size=16)
    assert all(np.array_equal(x["state"], y["state"]) for x, y in zip(a, b, strict=True))
    assert {sample_scene(s, "A").region for s in seeds} == {"A"}
    xs = np.concatenate([e["state"][:, 0] for e in a])
    assert xs.min() < -0.3 and xs.max() > 0.3  # the sweep crosses both halves of the workspace


def test_otplug_record_motion_writes_a_pool_dataset(tmp_path, capsys):
    pytest.importorskip("lerobot")
    from otplug.cli import main as cli

    assert cli(["record", "--out", str(tmp_path / "log"), "--motion", "waypoints", "--episodes", "2",
                "--image-size", "16", "--scene-seed", "70000"]) == 0
    assert "waypoints motion, no actions" in capsys.readouterr().out
    assert "action" not in json.loads((tmp_path / "log" / "meta" / "info.json").read_text())["features"]
    assert cli(["record", "--out", str(tmp_path / "log2"), "--motion", "waypoints", "--expert-noise", "0.1"]) == 2
    assert "--expert-noise is the expert's" in capsys.readouterr().err


def test_a_collapsing_normalised_cost_is_reported_once():
    """Dev round 1's failure mode: with one feature term and cost_normalization = 'mean', the features collapse onto
    each other while the normalisation amplifies the pull; a cost scale 1000x below its first value warns once."""
    ot = _label_loss(True)
    src, tgt = _states(6, seed=2)
    ot(src, tgt)
    with pytest.warns(otplug.OTCollapseWarning, match="ot_cost_scale"):
        ot({k: v * 1e-3 for k, v in src.items()}, {k: v * 1e-3 for k, v in tgt.items()})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ot({k: v * 1e-4 for k, v in src.items()}, {k: v * 1e-4 for k, v in tgt.items()})  # once only
