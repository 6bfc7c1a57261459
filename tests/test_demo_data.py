"""The synthetic sim/real demo pair, and the make_dataset helper for tests."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from otplug.demo import data as demo_data
from otplug.demo.data import DemoData, ensure_demo_datasets
from otplug.errors import OtplugError
from otplug.lerobot.datasets import open_dataset
from otplug.lerobot.pair_info import load_pair_info
from otplug.lerobot.synthetic import make_dataset

SMALL = dict(n_episodes=3, episode_len=10, image_size=16)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[DemoData, float]:
    cache = tmp_path_factory.mktemp("demo-cache")
    t0 = time.perf_counter()
    d = ensure_demo_datasets(cache, **SMALL)
    return d, time.perf_counter() - t0


def _episode_lengths(ds) -> list[int]:
    eps = np.asarray(ds.hf_dataset.data.column("episode_index").to_numpy())
    return [int((eps == e).sum()) for e in range(ds.meta.total_episodes)]


def test_offline_switch_holds():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_demo_features_and_episodes(demo):
    d, _ = demo
    sim = open_dataset(d.sim_repo_id, d.sim_root)
    real = open_dataset(d.real_repo_id, d.real_root)
    for ds in (sim, real):
        f = ds.meta.features
        assert f["observation.state"]["dtype"] == "float32" and tuple(f["observation.state"]["shape"]) == (4,)
        assert f["action"]["dtype"] == "float32" and tuple(f["action"]["shape"]) == (2,)
        assert f["observation.images.front"]["dtype"] == "image"  # PNG, not video
        assert tuple(f["observation.images.front"]["shape"]) == (16, 16, 3)
        assert ds.meta.total_episodes == 3
        assert ds.meta.video_keys == []
        item = ds[0]
        assert item["observation.images.front"].shape == (3, 16, 16)
        assert item["task"] == demo_data.DEMO_TASK
    assert _episode_lengths(sim) == [10, 10, 10]
    assert all(8 <= n <= 10 for n in _episode_lengths(real))
    assert d.pair_info_path is not None and d.pair_info_path.is_file()
    info = load_pair_info(d.pair_info_path, source=sim, target=real)
    assert sorted(info) == ["0", "1", "2"] and all(len(v) == 3 for v in info.values())


def test_real_differs_from_sim(demo):
    d, _ = demo
    sim = open_dataset(d.sim_repo_id, d.sim_root)
    real = open_dataset(d.real_repo_id, d.real_root)
    s_img, r_img = sim[0]["observation.images.front"], real[0]["observation.images.front"]
    # the background colour differs: compare the corner pixel
    assert float((s_img[:, 0, 0] - r_img[:, 0, 0]).abs().max()) > 0.1
    s_state = np.asarray(sim.hf_dataset.data.column("observation.state").to_pylist())
    r_state = np.asarray(real.hf_dataset.data.column("observation.state").to_pylist())
    # goal columns are constant per episode in sim, noisy in real
    assert np.allclose(s_state[:10, 2], s_state[0, 2])
    assert r_state[:8, 2].std() > 1e-4


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


def test_half_written_or_stale_cache_is_regenerated(tmp_path):
    small = dict(n_episodes=1, episode_len=3, image_size=8)
    d = ensure_demo_datasets(tmp_path, **small)
    folder = d.sim_root.parent
    stamp = folder / "otplug-demo.json"
    stamp.unlink()  # as if a writer died before the stamp
    d2 = ensure_demo_datasets(tmp_path, **small)
    assert stamp.is_file() and d2 == d
    assert open_dataset(d2.sim_repo_id, d2.sim_root).meta.total_episodes == 1
    # a stamp from another generator version counts as stale
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "generator_version": -1}))
    ensure_demo_datasets(tmp_path, **small)
    assert json.loads(stamp.read_text())["generator_version"] == demo_data.GENERATOR_VERSION
    # force regenerates
    ensure_demo_datasets(tmp_path, **small, force=True)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


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
