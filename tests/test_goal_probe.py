"""benchmarks/goal_probe.py: its frames carry the goals they are labelled with, and its read-outs recover a goal
that the features encode (and do not invent one they do not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from otplug.bench.env import GOAL_X_RANGE


@pytest.fixture(scope="module")
def probe():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "goal_probe.py"
    spec = importlib.util.spec_from_file_location("goal_probe", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["goal_probe"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("goal_probe", None)


@pytest.mark.parametrize("region", ["A", "B"])
def test_frames_show_their_goal_in_their_region(probe, region):
    img, goal = probe.frames("sim", region, 20, seed=3, size=32, imagenet=False)
    assert img.shape == (20, 3, 32, 32) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    x = goal[:, 0].numpy()
    assert (x < 0).all() if region == "A" else (x > 0).all()
    assert ((np.abs(x) >= GOAL_X_RANGE[0]) & (np.abs(x) <= GOAL_X_RANGE[1])).all()
    again, goal2 = probe.frames("sim", region, 20, seed=3, size=32, imagenet=False)
    assert torch.equal(img, again) and torch.equal(goal, goal2)
    other, _ = probe.frames("real", region, 20, seed=3, size=32, imagenet=False)
    assert not torch.equal(img, other)  # the other domain's look


def test_readouts_recover_an_encoded_goal_and_not_a_missing_one(probe):
    gen = torch.Generator().manual_seed(0)
    goal = torch.rand(600, 2, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(600, 6, generator=gen, dtype=torch.float64)
    encoded = torch.cat([goal @ torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64), noise], 1)
    fit, test = slice(0, 500), slice(500, 600)
    ridge = probe._ridge(encoded[fit], goal[fit], alpha=1e-6)
    assert torch.allclose(probe._apply(ridge, encoded[test]), goal[test], atol=1e-3)
    knn = probe._knn((encoded[fit], goal[fit]), encoded[test], k=3)
    assert probe._score(knn.float(), goal[test].float())["rmse"] < 0.4
    assert probe._score(-goal[test].float(), goal[test].float())["wrong_region"] == 1.0
    # features that carry no goal: the read-out is no better than the mean goal
    blind = probe._apply(probe._ridge(noise[fit], goal[fit], alpha=1.0), noise[test])
    assert probe._score(blind.float(), goal[test].float())["rmse"] > 0.7
