"""The example plugin, exercised through its real entry point (installed by `make test`)."""

import importlib.metadata as md

import pytest
import torch

import otplug


def test_registered_through_entry_point():
    eps = [ep for ep in md.entry_points(group="otplug") if ep.name == "cosine"]
    assert eps and eps[0].value == "otplug_cosine.plugin"
    comp = otplug.get_registry().get("term", "cosine")
    assert comp.dist == "otplug-cosine"


def test_cosine_term_in_a_config_with_an_encoder():
    cfg = otplug.load_config({"terms": [{"type": "cosine", "name": "cos", "src_key": "observation.state",
                                         "scale": 2.0}], "reg": 0.1, "tau_src": 1.0, "tau_tgt": 1.0})
    enc = torch.nn.Linear(3, 4)
    enc.encode_feature_for_ot = lambda key, x: enc(x)
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    res = otplug.OTLoss(cfg)({"observation.state": x}, {"observation.state": y}, encoder=enc)
    fx = torch.nn.functional.normalize(enc(x), dim=-1)
    fy = torch.nn.functional.normalize(enc(y), dim=-1)
    torch.testing.assert_close(res.cost, 2.0 * (1 - fx @ fy.T))
    res.loss.backward()
    assert enc.weight.grad is not None


def test_config_errors_name_the_field():
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]\.scale"):
        otplug.load_config({"terms": [{"type": "cosine", "src_key": "a", "scale": -1.0}]})
    with pytest.raises(otplug.ConfigError, match="did you mean 'src_key'"):
        otplug.load_config({"terms": [{"type": "cosine", "src_kye": "a"}]})
