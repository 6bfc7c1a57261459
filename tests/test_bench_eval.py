"""Closed-loop evaluation on the reach benchmark: `otplug eval`, the rollout, lerobot checkpoints, lerobot-eval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from otplug.bench import BatchReachEnv, ExpertPolicy, run_expert
from otplug.bench.eval import evaluate, rollout, to_policy_batch, write_frame_strip
from otplug.stats import wilson_interval
from otplug.cli import main as cli_main

pytest.importorskip("torch")


def test_wilson_interval():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(52, 100) == pytest.approx((0.4231, 0.6153), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)  # no episodes: no interval (otplug.stats.StatsError)


@pytest.mark.parametrize("domain", ["sim", "real"])
def test_evaluating_the_expert_equals_the_expert(domain):
    seeds = [77 + e for e in range(60)]
    direct = run_expert(domain, "all", seeds)
    res = evaluate(ExpertPolicy(domain), domain=domain, region="all", episodes=60, seed=77, batch=7, keep_frames=3)
    np.testing.assert_array_equal(res.success, direct)
    assert res.successes == int(direct.sum()) >= 57
    assert len(res.frames) == 3 and res.frames[0].shape[1:] == (32, 32, 3)
    assert len(res.frames[0]) == res.steps[0] + 1
    d = res.to_dict()
    assert d["episodes"] == 60 and d["successes"] == res.successes and d["ci95"][0] <= d["success_rate"] <= 1
    # the batch size does not change any episode
    res1 = evaluate(ExpertPolicy(domain), domain=domain, region="all", episodes=60, seed=77, batch=60)
    np.testing.assert_array_equal(res1.success, res.success)
    np.testing.assert_array_equal(res1.steps, res.steps)


def test_a_blind_policy_fails():
    class Still:
        def reset(self):
            pass

        def select_action(self, batch):
            import torch

            return torch.zeros(batch["observation.state"].shape[0], 2)

    res = evaluate(Still(), domain="real", region="B", episodes=10, batch=10)
    assert res.successes == 0 and (res.steps == 40).all()


@pytest.mark.parametrize(("region", "other_side"), [("A", 0.0), ("B", 1.0)])
def test_where_episodes_end(region, other_side):
    """A policy that always drives left takes every region-B agent to the A side, and no region-A agent to B."""
    class Left:
        def reset(self):
            pass

        def select_action(self, batch):
            import torch

            return torch.tensor([[-1.0, 0.0]]).expand(batch["observation.state"].shape[0], 2)

    res = evaluate(Left(), domain="sim", region=region, episodes=6, batch=4)
    assert res.ended_other_side.shape == (6,) and res.other_side_rate == other_side
    assert res.to_dict()["ended_other_side"] == int(6 * other_side)
    assert evaluate(ExpertPolicy("real"), domain="real", region=region, episodes=6).other_side_rate == 0.0


def test_policy_batch_matches_lerobot_preprocessing():
    pytest.importorskip("lerobot")
    from lerobot.envs.utils import preprocess_observation

    env = BatchReachEnv(3, "real")
    obs, _ = env.reset([1, 2, 3])
    ours, theirs = to_policy_batch(obs, 3), preprocess_observation(obs)
    assert ours["task"] == ["move the agent to the goal"] * 3
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
        assert (ours[key] == value).all(), key
    assert ours["observation.images.front"].shape == (3, 3, 32, 32)


def test_rollout_passes_env_state_only_when_asked():
    seen = []

    class Spy(ExpertPolicy):
        def select_action(self, batch):
            seen.append(sorted(batch))
            return super().select_action(batch)

    env = BatchReachEnv(2, "sim")
    out = rollout(Spy("sim"), env, [1, 2])
    assert out["success"].all()
    assert seen[0] == ["env_state", "observation.images.front", "observation.state", "task"]


def test_frame_strip(tmp_path):
    from PIL import Image

    res = evaluate(ExpertPolicy("real"), domain="real", region="A", episodes=3, batch=3, keep_frames=3)
    path = write_frame_strip(res.frames, res.success, res.steps, tmp_path / "f.png", seeds=[1000, 1001, 1002],
                             title="expert")
    img = Image.open(path)
    assert img.size[0] >= 8 * 96 and img.size[1] >= 3 * 96


def _cli(capsys, *args):
    rc = cli_main(["eval", *args])
    return rc, capsys.readouterr()


def test_eval_cli_errors(tmp_path, capsys):
    rc, out = _cli(capsys, "--policy", str(tmp_path / "missing"), "--domain", "real", "--episodes", "2")
    assert rc == 2
    assert out.err.strip().count("\n") == 0 and out.err.startswith("otplug: error: policy path")
    rc, out = _cli(capsys, "--policy", str(tmp_path), "--domain", "real")
    assert rc == 2 and "is not a lerobot checkpoint" in out.err and out.err.strip().count("\n") == 0
    rc, out = _cli(capsys, "--policy", str(tmp_path), "--domain", "mars")
    assert rc == 2 and "unknown domain 'mars'" in out.err and out.err.strip().count("\n") == 0
    rc, out = _cli(capsys, "--policy", str(tmp_path), "--domain", "sim", "--region", "C")
    assert rc == 2 and "unknown region 'C'" in out.err
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    rc, out = _cli(capsys, "--policy", str(tmp_path), "--domain", "sim", "--device", "cpu")
    assert rc == 2 and "not a lerobot policy config" in out.err and out.err.strip().count("\n") == 0


# ---------------------------------------------------------------------------------------------------------------------
# a real (tiny) ACT checkpoint, end to end


@pytest.fixture(scope="module")
def tiny_act(tmp_path_factory):
    pytest.importorskip("lerobot")
    pytest.importorskip("accelerate")
    from otplug.bench.record import record_demos

    root = tmp_path_factory.mktemp("bench")
    record_demos(root / "real_A", domain="real", region="A", n_episodes=4, seed=0, repo_id="test/reach_real_A")
    args = [
        "train", "--dataset.repo_id=test/reach_real_A", f"--dataset.root={root / 'real_A'}",
        "--dataset.video_backend=pyav", "--policy.type=act", "--policy.device=cpu",
        "--policy.pretrained_backbone_weights=null", "--policy.push_to_hub=false", "--policy.dim_model=64",
        "--policy.n_heads=2", "--policy.dim_feedforward=64", "--policy.n_encoder_layers=1",
        "--policy.n_decoder_layers=1", "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=5",
        "--policy.n_action_steps=5", "--num_workers=0", "--batch_size=4", "--steps=2", "--save_freq=2",
        "--log_freq=1", "--seed=1", "--wandb.enable=false", f"--output_dir={root / 'run'}", "--ot.enabled=false",
    ]
    assert cli_main(args) == 0
    return root / "run"


@pytest.mark.slow
def test_eval_tiny_act_end_to_end(tiny_act, tmp_path, capsys):
    rc, out = _cli(capsys, "--policy", str(tiny_act), "--domain", "real", "--region", "B", "--episodes", "6",
                   "--batch", "4", "--output-dir", str(tmp_path / "ev"), "--device", "cpu")
    assert rc == 0, out.err
    assert "real/B: success" in out.out and "Wilson" in out.out
    info = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert info["episodes"] == 6 and info["policy_type"] == "act" and info["domain"] == "real"
    assert info["device"] == "cpu" and info["torch_threads"] >= 1 and info["image_size"] == 32
    assert 0 <= info["successes"] <= 6 and len(info["ci95"]) == 2 and len(info["episode_success"]) == 6
    assert (tmp_path / "ev" / "frames.png").stat().st_size > 1000
    # the pretrained_model folder itself works too, and the default output dir is inside the run
    ckpt = tiny_act / "checkpoints" / "last" / "pretrained_model"
    rc, out = _cli(capsys, "--policy", str(ckpt), "--domain", "sim", "--episodes", "2", "--seed", "5", "-q")
    assert rc == 0, out.err
    assert (tiny_act / "eval" / "sim-all-seed5" / "eval.json").is_file()


@pytest.mark.slow
def test_lerobot_eval_plugin_matches_otplug_eval(tiny_act):
    """`lerobot-eval --env.type=otplug_reach` (through the lerobot_env_otplug plugin) plays the same episodes."""
    pytest.importorskip("lerobot_env_otplug")
    import torch
    from lerobot.envs.factory import make_env, make_env_config
    from lerobot.scripts.lerobot_eval import eval_policy
    from lerobot.scripts.lerobot_eval import rollout as lerobot_rollout
    from lerobot.utils.import_utils import register_third_party_plugins

    from otplug.bench.eval import load_policy

    register_third_party_plugins()
    cfg = make_env_config("otplug_reach", domain="real", region="all")
    assert cfg.gym_id == "otplug/Reach-v0"
    envs = make_env(cfg, n_envs=4)
    vec = envs["otplug_reach"][0]
    loaded = load_policy(tiny_act, "cpu")
    from lerobot.envs.factory import make_env_pre_post_processors

    env_pre, env_post = make_env_pre_post_processors(cfg, loaded.policy.config)
    with torch.no_grad():
        info = eval_policy(vec, loaded.policy, env_pre, env_post, loaded.preprocessor, loaded.postprocessor,
                           n_episodes=8, start_seed=1000)
    vec.close()
    theirs = [bool(ep["success"]) for ep in info["per_episode"]]
    ours = evaluate(loaded.policy, domain="real", region="all", episodes=8, seed=1000, batch=4,
                    preprocessor=loaded.preprocessor, postprocessor=loaded.postprocessor)
    assert theirs == [bool(x) for x in ours.success]
    # stronger than equal success counts: lerobot's rollout sends the same actions, step for step
    seeds = [1000, 1001, 1002, 1003]
    vec = make_env(cfg, n_envs=4)["otplug_reach"][0]
    with torch.no_grad():
        ret = lerobot_rollout(vec, loaded.policy, env_pre, env_post, loaded.preprocessor, loaded.postprocessor,
                              seeds=seeds)
    vec.close()
    env = BatchReachEnv(4, "real", "all")
    mine = rollout(loaded.policy, env, seeds, preprocessor=loaded.preprocessor, postprocessor=loaded.postprocessor)
    for i in range(4):
        t = int(mine["steps"][i])
        np.testing.assert_allclose(ret["action"][i, :t].numpy(), mine["actions"][i, :t], rtol=1e-4, atol=1e-5)
        assert bool(ret["success"][i].any()) == bool(mine["success"][i])
