"""The reach benchmark's environment, expert and demo recording (otplug.bench)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from otplug.bench import REAL, SIM, BatchReachEnv, DomainParams, region_of, run_expert, sample_scene
from otplug.bench.env import CAMERA, render_scene
from otplug.bench.expert import expert_action

SEEDS = list(range(5000, 5300))


@pytest.mark.parametrize("domain", ["sim", "real"])
@pytest.mark.parametrize("region", ["A", "B", "all"])
def test_expert_succeeds(domain, region):
    success = run_expert(domain, region, SEEDS)
    assert success.mean() >= 0.95, f"expert {domain}/{region}: {success.mean():.3f}"


def test_observation_layout_and_goal_only_in_image():
    env = BatchReachEnv(4, "real", "all", image_size=32)
    obs, info = env.reset([1, 2, 3, 4])
    img, state = obs["pixels"][CAMERA], obs["agent_pos"]
    assert img.shape == (4, 32, 32, 3) and img.dtype == np.uint8
    assert state.shape == (4, 2) and state.dtype == np.float32
    np.testing.assert_allclose(state, [sample_scene(s).agent for s in (1, 2, 3, 4)], atol=1e-6)
    assert not info["is_success"].any()
    # the state is the agent only; moving the goal changes the image and nothing else
    a = render_scene((0.0, 0.0), (-0.5, 0.3), "sim")
    b = render_scene((0.0, 0.0), (0.5, -0.3), "sim")
    assert (a != b).any(axis=-1).sum() > 20


def test_domains_differ_visually():
    scene = sample_scene(7)
    sim = render_scene(scene.agent, scene.goal, SIM)
    real = render_scene(scene.agent, scene.goal, REAL, rng=np.random.default_rng(0))
    assert np.abs(sim.astype(float) - real.astype(float)).mean() > 40
    assert len(np.unique(real.reshape(-1, 3), axis=0)) > len(np.unique(sim.reshape(-1, 3), axis=0))  # texture+noise
    # every visual knob differs between the presets
    for knob in ("background", "agent_rgb", "goal_rgb", "texture", "brightness", "lighting", "noise", "shift"):
        assert getattr(SIM, knob) != getattr(REAL, knob), knob
    # real images are noisy: two renders of one state differ; sim renders are exact
    env = BatchReachEnv(1, "real")
    env.reset([3])
    assert (env.render() != env.render()).any()
    env = BatchReachEnv(1, "sim")
    env.reset([3])
    assert (env.render() == env.render()).all()


def test_camera_shift_and_textures():
    base = DomainParams(noise=0.0)
    a = render_scene((0.0, 0.0), (0.5, 0.5), base)
    b = render_scene((0.0, 0.0), (0.5, 0.5), base.replace(shift=(3, 0)))
    np.testing.assert_array_equal(a[:, :-3], b[:, 3:])  # the scene moved 3 px to the right
    for texture in ("stripes", "checker"):
        img = render_scene((0.0, 0.0), (0.5, 0.5), base.replace(texture=texture, background2=(200, 200, 200)))
        assert (img == 200).all(axis=-1).sum() > 100, texture
    with pytest.raises(ValueError):
        DomainParams(texture="plaid")
    with pytest.raises(ValueError):
        DomainParams(agent_rgb=(300, 0, 0))


def test_domains_differ_in_dynamics():
    for knob in ("gain", "damping", "action_noise", "latency"):
        assert getattr(SIM, knob) != getattr(REAL, knob), knob
    trajs = {}
    for name in ("sim", "real"):
        env = BatchReachEnv(1, name, max_steps=10)
        env.reset([11])
        pos = []
        for _ in range(5):
            env.step(np.array([[1.0, 0.0]]))
            pos.append(env.pos[0].copy())
        trajs[name] = np.array(pos)
    assert abs(trajs["sim"][0, 0] - sample_scene(11).agent[0] - SIM.gain) < 1e-9  # pure velocity control
    assert abs(trajs["real"][0, 0] - sample_scene(11).agent[0]) < 0.05  # one step of latency: barely moves
    assert np.abs(trajs["sim"] - trajs["real"]).max() > 0.05


def test_dynamics_knobs():
    d = DomainParams(gain=0.1, damping=0.5, latency=2)
    env = BatchReachEnv(1, d, max_steps=10)
    env.reset([0])
    x0 = env.pos[0, 0]
    xs = []
    for _ in range(4):
        env.step(np.array([[2.0, 0.0]]))  # clipped to 1
        xs.append(env.pos[0, 0] - x0)
    # latency 2: nothing for two steps; then v = 0.1, then v = 0.5 * 0.1 + 0.1
    np.testing.assert_allclose(xs, [0.0, 0.0, 0.1, 0.25], atol=1e-9)


def test_regions_partition_start_states():
    seeds = range(2000)
    a = [sample_scene(s, "A") for s in seeds]
    b = [sample_scene(s, "B") for s in seeds]
    both = [sample_scene(s, "all") for s in seeds]
    assert all(region_of(sc.goal) == "A" and sc.goal[0] < 0 for sc in a)
    assert all(region_of(sc.goal) == "B" and sc.goal[0] >= 0 for sc in b)
    for sa, sb, s in zip(a, b, both, strict=True):
        assert s == (sa if s.region == "A" else sb)  # each "all" scene is its seed's A or B scene
    share_a = np.mean([s.region == "A" for s in both])
    assert 0.45 < share_a < 0.55
    # the agent starts near the centre: the region decides which way to go
    assert max(max(abs(v) for v in s.agent) for s in both) <= 0.2
    assert min(abs(s.goal[0]) for s in both) >= 0.3
    with pytest.raises(ValueError):
        sample_scene(0, "C")


def test_same_seed_same_episode_and_batch_invariance():
    def play(seeds, domain="real"):
        env = BatchReachEnv(len(seeds), domain, "all")
        obs, _ = env.reset(seeds)
        imgs, states = [obs["pixels"][CAMERA]], [obs["agent_pos"]]
        while not env.done.all():
            obs, *_ = env.step(expert_action(env.privileged_state(), env.domain))
            imgs.append(obs["pixels"][CAMERA])
            states.append(obs["agent_pos"])
        return np.stack(imgs, 1), np.stack(states, 1), env.steps.copy()

    i1, s1, n1 = play([5, 6, 7])
    i2, s2, n2 = play([5, 6, 7])
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    # episode 6 alone plays exactly as inside the batch (its own RNG streams)
    i3, s3, n3 = play([6])
    t = n3[0] + 1
    np.testing.assert_array_equal(i3[0, :t], i1[1, :t])
    np.testing.assert_array_equal(s3[0, :t], s1[1, :t])
    i4, _, _ = play([8, 6, 7])
    assert (i4[0, 0] != i1[0, 0]).any()


def test_sim_and_real_share_scenes():
    sim = BatchReachEnv(5, "sim")
    real = BatchReachEnv(5, "real")
    sim.reset(range(5))
    real.reset(range(5))
    np.testing.assert_array_equal(sim.pos, real.pos)
    np.testing.assert_array_equal(sim.goal, real.goal)


def test_finished_episodes_freeze():
    env = BatchReachEnv(2, "sim", max_steps=3)
    env.reset([0, 1])
    for _ in range(3):
        _, _, term, trunc, info = env.step(np.zeros((2, 2)))
    assert env.done.all() and not env.success.any() and (env.steps == 3).all()
    pos = env.pos.copy()
    env.step(np.ones((2, 2)))
    np.testing.assert_array_equal(env.pos, pos)
    assert (env.steps == 3).all()


def test_gym_env():
    gym = pytest.importorskip("gymnasium")
    from otplug.bench.gym_env import GYM_ID, ReachEnv, register_gym

    env = ReachEnv(domain="sim", region="B", image_size=24)
    obs, info = env.reset(seed=42)
    assert env.observation_space.contains(obs)
    assert obs["agent_pos"] == pytest.approx(np.float32(sample_scene(42, "B").agent))
    done, steps = False, 0
    while not done:
        state = env.core.privileged_state()
        obs, reward, term, trunc, info = env.step(expert_action(state, "sim")[0])
        done, steps = term or trunc, steps + 1
    assert info["is_success"] and reward == 1.0 and steps == 40  # reach and hold: every episode lasts 40 steps
    assert env.render().shape == (24, 24, 3)
    fast = ReachEnv(domain="sim", region="B", success_rule="reach")
    fast.reset(seed=42)
    done, steps = False, 0
    while not done:
        *_, term, trunc, info = fast.step(expert_action(fast.core.privileged_state(), "sim")[0])
        done, steps = term or trunc, steps + 1
    assert info["is_success"] and steps < 40  # the older rule ends at the first pass
    with pytest.raises(TypeError, match="succes_radius"):
        ReachEnv(domain="sim", succes_radius=0.2)  # a misspelt argument is not swallowed
    assert register_gym() == GYM_ID
    made = gym.make(GYM_ID, domain="real", max_episode_steps=40)
    o1, _ = made.reset(seed=3)
    o2, _ = made.reset(seed=3)
    np.testing.assert_array_equal(o1["pixels"][CAMERA], o2["pixels"][CAMERA])
    from gymnasium.utils.env_checker import check_env

    check_env(ReachEnv(domain="real"), skip_render_check=True)


# ---------------------------------------------------------------------------------------------------------------------
# recording (lerobot datasets)


def test_episode_seeds_are_stable():
    from otplug.bench.record import episode_seeds

    assert episode_seeds(3, 5) == episode_seeds(3, 8)[:5]
    assert episode_seeds(3, 5) != episode_seeds(4, 5)
    assert all(0 <= s < 2**31 for s in episode_seeds(0, 100))


def test_record_sim_and_real_pair(tmp_path):
    pytest.importorskip("lerobot")
    from otplug.bench.record import record_demos

    real = record_demos(tmp_path / "real", domain="real", region="A", n_episodes=3, seed=1, scene_seed=9)
    sim = record_demos(tmp_path / "sim", domain="sim", region="all", n_episodes=6, seed=2, scene_seed=9)
    assert real.successes == 3 and sim.successes == 6
    rds, sds = real.open(), sim.open()
    assert rds.fps == 10 and rds.num_episodes == 3 and sds.num_episodes == 6
    assert rds.meta.features["observation.state"]["shape"] == (2,)
    first = rds[0]
    assert first["observation.images.front"].shape == (3, 32, 32)
    assert first["observation.state"].shape == (2,) and first["action"].shape == (2,)
    assert first["task"] == "move the agent to the goal"
    meta = json.loads((tmp_path / "real" / "meta" / "otplug_bench.json").read_text())
    assert meta["domain"]["name"] == "real" and meta["region"] == "A" and meta["scene_seed"] == 9
    assert meta["episode_seeds"] == real.episode_seeds == sim.episode_seeds[:3]

    def starts(ds):
        cols = ds.hf_dataset.select_columns(["episode_index", "frame_index", "observation.state"])[:]
        return {int(e): np.asarray(s) for e, f, s in zip(cols["episode_index"], cols["frame_index"],
                                                          cols["observation.state"], strict=True) if int(f) == 0}

    rs, ss = starts(rds), starts(sds)
    sim_regions = [sample_scene(s, "all").region for s in sim.episode_seeds]
    for ep in range(3):
        # same scene seed -> same start; the sim episode is the real one's partner when it is in region A
        np.testing.assert_allclose(rs[ep], ss[ep], atol=1e-6)
        if sim_regions[ep] == "A":
            assert sample_scene(sim.episode_seeds[ep], "all") == sample_scene(real.episode_seeds[ep], "A")
    with pytest.raises(Exception, match="not empty"):
        record_demos(tmp_path / "real", n_episodes=1)


@pytest.mark.slow
def test_record_video_decodes_with_pyav(tmp_path):
    pytest.importorskip("lerobot")
    from otplug.bench.record import record_demos

    res = record_demos(tmp_path / "v", domain="sim", region="B", n_episodes=2, seed=0, use_videos=True)
    ds = res.open(video_backend="pyav")
    assert ds.meta.video_keys == ["observation.images.front"]
    frame = ds[1]["observation.images.front"]
    assert frame.shape == (3, 32, 32) and 0.0 <= float(frame.min()) and float(frame.max()) <= 1.0
    assert float(frame.max()) > 0.5  # the agent (red) is there


# ---------------------------------------------------------------------------------------------------------------------
# the task needs the image (SPEC §8.1): goal-blind policies fail, the expert succeeds

N_BLIND = 1000
BLIND_SEEDS = range(700_000, 700_000 + N_BLIND)


class _Unrendered(BatchReachEnv):
    """The task without pictures: these policies never look (the dynamics, noise and success rule are the env's)."""

    def _obs(self):
        return {}


def _play(domain, region, policy, **kw):
    env = _Unrendered(N_BLIND, domain, region, **kw)
    env.reset(BLIND_SEEDS)
    t = 0
    while not env.done.all():
        env.step(policy(env, t))
        t += 1
    return float(env.success.mean())


def _goto(target_fn):
    """A controller to a goal-independent target (a point, or a point moving along a path with time)."""
    def policy(env, t):
        return np.clip(0.6 * (np.asarray(target_fn(t)) - env.pos) / env.domain.gain, -1, 1)
    return policy


def _blind_policies(region):
    side = -1.0 if region == "A" else 1.0
    xs = np.linspace(-0.85, 0.85, 40)
    path = np.stack([xs, 0.85 * np.sin(np.linspace(0, 6 * np.pi, 40))], axis=1)  # a serpentine over both regions
    lane = np.stack([side * (0.3 + 0.55 * (np.arange(40) % 10) / 9), np.linspace(-0.85, 0.85, 40)], axis=1)
    return {
        "hold still": lambda env, t: np.zeros((env.num_envs, 2)),
        "region centre (knows the region)": _goto(lambda t: (side * 0.575, 0.0)),
        "fixed far point": _goto(lambda t: (side * 0.8, 0.6)),
        "serpentine sweep": _goto(lambda t: path[min(t, 39)]),
        "raster of the region": _goto(lambda t: lane[min(t, 39)]),
        "slow sweep then stop": _goto(lambda t: (side * 0.575, -0.85 + 1.7 * min(t, 30) / 30)),
        "full speed right": lambda env, t: np.tile([side, 0.0], (env.num_envs, 1)),
    }


@pytest.mark.parametrize("domain", ["sim", "real"])
@pytest.mark.parametrize("region", ["A", "B"])
def test_goal_blind_policies_fail_and_the_expert_succeeds(domain, region):
    """Under reach-and-hold the outcome is where the agent ends up; a policy that never reads the goal ends up
    independently of it: <= pi r^2 / region area = 3.4% (r = 0.1, 0.55 x 1.7), measured <= 5% on 1000 episodes."""
    for name, policy in _blind_policies(region).items():
        rate = _play(domain, region, policy)
        assert rate <= 0.05, f"{name} succeeds in {rate:.1%} of {domain}/{region} episodes without reading the goal"
    expert = _play(domain, region, lambda env, t: expert_action(env.privileged_state(), env.domain))
    assert expert >= 0.95


def test_the_older_reach_rule_is_solved_blind():
    """Why the rule changed: under "reach" (success at the first pass) the serpentine sweep succeeds often."""
    sweep = _blind_policies("B")["serpentine sweep"]
    assert _play("real", "B", sweep, success_rule="reach") > 0.2
    assert _play("real", "B", sweep) <= 0.05


def test_gym_make_works_after_importing_otplug_bench_alone():
    import subprocess
    import sys

    code = ("import gymnasium as gym, otplug.bench; env = gym.make('otplug/Reach-v0', domain='real', region='B'); "
            "obs, info = env.reset(seed=1); print(obs['pixels']['front'].shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(32, 32, 3)"
