"""The synthetic sim/real demo pair, and the make_dataset helper for tests."""

from __future__ import annotations

import json
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from otplug.bench.env import TASK, sample_scene
from otplug.bench.record import BENCH_META, episode_seeds
from otplug.demo import data as demo_data
from otplug.demo.data import DemoData, ensure_demo_datasets
from otplug.errors import OtplugError
from otplug.lerobot.datasets import open_dataset
from otplug.lerobot.pair_info import load_pair_info
from otplug.lerobot.synthetic import make_dataset
from otplug.recipes import CAMERA_KEY

SMALL = dict(n_episodes=3, max_steps=12, image_size=16)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[DemoData, float]:
    cache = tmp_path_factory.mktemp("demo-cache")
    t0 = time.perf_counter()
    d = ensure_demo_datasets(cache, **SMALL)
    return d, time.perf_counter() - t0


def _episode_lengths(ds) -> list[int]:
    eps = np.asarray(ds.hf_dataset.data.column("episode_index").to_numpy())
    return [int((eps == e).sum()) for e in range(ds.meta.total_episodes)]


def _states(ds) -> dict[int, np.ndarray]:
    """episode -> its observation.state rows (T, 2), in frame order."""
    cols = ds.hf_dataset.select_columns(["episode_index", "observation.state"])[:]
    eps = np.asarray(cols["episode_index"])
    states = np.asarray(cols["observation.state"], dtype=np.float32)
    return {int(e): states[eps == e] for e in np.unique(eps)}


def _pair(d: DemoData):
    return open_dataset(d.sim_repo_id, d.sim_root), open_dataset(d.real_repo_id, d.real_root)


def test_offline_switch_holds():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_demo_features_and_episodes(demo):
    d, _ = demo
    sim, real = _pair(d)
    for ds in (sim, real):
        f = ds.meta.features
        assert f["observation.state"]["dtype"] == "float32" and tuple(f["observation.state"]["shape"]) == (2,)
        assert f["observation.state"]["names"] == ["agent_x", "agent_y"]  # the goal is only in the image
        assert f["action"]["dtype"] == "float32" and tuple(f["action"]["shape"]) == (2,)
        assert f[CAMERA_KEY]["dtype"] == "image"  # PNG, not video
        assert tuple(f[CAMERA_KEY]["shape"]) == (16, 16, 3)
        assert ds.meta.total_episodes == 3 and ds.meta.video_keys == []
        # the benchmark's episodes always run to max_steps, in both domains
        assert _episode_lengths(ds) == [12, 12, 12]
        item = ds[0]
        assert item[CAMERA_KEY].shape == (3, 16, 16)
        assert item["task"] == TASK
    assert d.pair_info_path is not None and d.pair_info_path.is_file()
    info = load_pair_info(d.pair_info_path, source=sim, target=real)
    assert sorted(info) == ["0", "1", "2"] and all(len(v) == 3 for v in info.values())


def test_episode_i_starts_from_the_same_scene_on_both_sides(demo):
    d, _ = demo
    metas = [json.loads((root / "meta" / BENCH_META).read_text()) for root in (d.sim_root, d.real_root)]
    assert [m["domain"]["name"] for m in metas] == ["sim", "real"]
    assert metas[0]["episode_seeds"] == metas[1]["episode_seeds"] == episode_seeds(metas[0]["scene_seed"], 3)
    sim, real = (_states(ds) for ds in _pair(d))
    for ep, seed in enumerate(metas[0]["episode_seeds"]):
        start = sample_scene(seed, "all").agent
        np.testing.assert_allclose(sim[ep][0], start, atol=1e-6)
        np.testing.assert_allclose(real[ep][0], start, atol=1e-6)
    # ... and the goals differ between episodes, so the scenes do
    goals = {sample_scene(s, "all").goal for s in metas[0]["episode_seeds"]}
    assert len(goals) == 3


def test_dtw_finds_the_true_partner(demo):
    d, _ = demo
    sim, real = _pair(d)
    info = load_pair_info(d.pair_info_path, source=sim, target=real)
    # entries are sorted by distance: the closest sim episode of real episode i is sim episode i
    assert {t: v[0]["demo_name"] for t, v in info.items()} == {"0": "0", "1": "1", "2": "2"}


def test_real_differs_from_sim(demo):
    d, _ = demo
    sim, real = _pair(d)
    s_img, r_img = sim[0][CAMERA_KEY], real[0][CAMERA_KEY]
    # the background differs: compare the corner pixel
    assert float((s_img[:, 0, 0] - r_img[:, 0, 0]).abs().max()) > 0.1
    # the dynamics differ (weaker actuator, inertia, latency, action noise): same start, different paths
    s_state, r_state = _states(sim), _states(real)
    assert not np.allclose(s_state[0], r_state[0], atol=1e-3)


def test_cache_is_reused(demo, tmp_path):
    d, _ = demo
    cache = d.sim_root.parent.parent
    stamp = d.sim_root.parent / "otplug-demo.json"
    mtime = stamp.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = ensure_demo_datasets(cache, **SMALL)
    assert time.perf_counter() - t0 < 0.5
    assert again == d and stamp.stat().st_mtime_ns == mtime
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_half_written_or_stale_cache_is_regenerated(tmp_path, monkeypatch):
    small = dict(n_episodes=1, max_steps=3, image_size=8)
    d = ensure_demo_datasets(tmp_path, **small)
    folder = d.sim_root.parent
    stamp = folder / "otplug-demo.json"
    # as if a writer died half-way: no stamp, and one dataset missing
    stamp.unlink()
    shutil.rmtree(d.real_root)
    d2 = ensure_demo_datasets(tmp_path, **small)
    assert stamp.is_file() and d2 == d
    assert open_dataset(d2.real_repo_id, d2.real_root).meta.total_episodes == 1
    # a stamp from another generator version counts as stale
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "generator_version": -1}))
    ensure_demo_datasets(tmp_path, **small)
    assert json.loads(stamp.read_text())["generator_version"] == demo_data.GENERATOR_VERSION
    # force regenerates
    ensure_demo_datasets(tmp_path, **small, force=True)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    # a new generator version generates its own folder
    monkeypatch.setattr(demo_data, "GENERATOR_VERSION", demo_data.GENERATOR_VERSION + 1)
    d3 = ensure_demo_datasets(tmp_path, **small)
    assert d3.sim_root.parent != folder and d3.sim_root.parent.name.startswith(f"v{demo_data.GENERATOR_VERSION}-")
    assert json.loads((d3.sim_root.parent / "otplug-demo.json").read_text())["generator_version"] == \
        demo_data.GENERATOR_VERSION
    assert open_dataset(d3.sim_repo_id, d3.sim_root).meta.total_episodes == 1


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OTPLUG_CACHE", str(tmp_path))
    assert demo_data.default_cache_dir() == tmp_path / "demo"


def test_make_dataset_arbitrary_shapes(tmp_path):
    ds = make_dataset(tmp_path / "ds", episode_lengths=[3, 5], state_dim=6, action_dim=3,
                      cameras=("front", "observation.images.wrist"), image_size=(6, 10))
    assert ds.meta.total_episodes == 2 and len(ds) == 8
    item = ds[4]  # episode 1, frame 1
    assert item["observation.state"].shape == (6,) and item["action"].shape == (3,)
    assert item["observation.state"][:2].tolist() == [1.0, 1.0]
    assert item["observation.images.front"].shape == (3, 6, 10)
    assert item["observation.images.wrist"].shape == (3, 6, 10)
    no_cam = make_dataset(tmp_path / "nocam", episode_lengths=[2], cameras=(), state_dim=1, action_dim=1)
    assert no_cam.meta.camera_keys == [] and no_cam[1]["observation.state"].reshape(-1).tolist() == [0.0]


def test_open_dataset_errors(tmp_path):
    with pytest.raises(OtplugError, match="not a LeRobot dataset"):
        open_dataset("x/y", tmp_path)
    with pytest.raises(OtplugError, match="no local root"):
        open_dataset("nobody/nothing")
