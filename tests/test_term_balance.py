"""Term balance: each term's share of M is a metric, term_normalization makes weights shares, a drowned term warns."""

from __future__ import annotations

import warnings

import pytest
import torch

import otplug


def _batches(scale_a: float, scale_b: float):
    g = torch.Generator().manual_seed(0)
    src = {"a": torch.randn(6, 3, generator=g) * scale_a, "b": torch.randn(6, 2, generator=g) * scale_b}
    tgt = {"a": torch.randn(5, 3, generator=g) * scale_a, "b": torch.randn(5, 2, generator=g) * scale_b}
    return src, tgt


def _loss(**top):
    return otplug.OTLoss(otplug.load_config({
        "reg": 0.5, "tau_src": 1.0, "tau_tgt": 1.0, "cost_normalization": "mean", **top,
        "terms": [{"type": "label", "name": "big", "src_key": "a", "weight": 1.0},
                  {"type": "label", "name": "small", "src_key": "b", "weight": 1.0}]}))


def test_shares_sum_to_one_and_follow_the_cost_scales():
    src, tgt = _batches(10.0, 0.1)
    m = _loss()(src, tgt).metrics
    assert m["ot_cost_share/big"] + m["ot_cost_share/small"] == pytest.approx(1.0)
    assert m["ot_cost_share/small"] < 0.01  # 100x smaller features: ~1e-4 of M


def test_term_normalization_makes_weights_shares():
    src, tgt = _batches(10.0, 0.1)
    loss = otplug.OTLoss(otplug.load_config({
        "reg": 0.5, "tau_src": 1.0, "tau_tgt": 1.0, "term_normalization": "mean",
        "terms": [{"type": "label", "name": "big", "src_key": "a", "weight": 0.75},
                  {"type": "label", "name": "small", "src_key": "b", "weight": 0.25}]}))
    res = loss(src, tgt)
    assert res.metrics["ot_cost_share/big"] == pytest.approx(0.75)
    assert res.metrics["ot_cost_share/small"] == pytest.approx(0.25)
    a = torch.cdist(src["a"], tgt["a"]) ** 2
    b = torch.cdist(src["b"], tgt["b"]) ** 2
    torch.testing.assert_close(res.cost, 0.75 * a / a.mean() + 0.25 * b / b.mean(), rtol=1e-4, atol=1e-5)


def test_a_drowned_term_warns_once_after_many_steps():
    src, tgt = _batches(10.0, 0.1)
    loss = _loss()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(loss.SMALL_SHARE_STEPS + 10):
            loss(src, tgt)
    msgs = [str(w.message) for w in seen if "drown" in str(w.message)]
    assert len(msgs) == 1 and "'small'" in msgs[0] and "term_normalization = 'mean'" in msgs[0]


def test_term_normalization_is_validated():
    with pytest.raises(otplug.ConfigError, match="term_normalization"):
        otplug.load_config({"term_normalization": "max", "terms": [{"type": "label", "src_key": "a"}]})
