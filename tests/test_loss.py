"""OTLoss through the public API: the SPEC worked example, gradients, term semantics, batch errors."""

from __future__ import annotations


import attrs
import numpy as np
import pytest
import torch

import otplug
from otplug.errors import BatchError, OtplugError
from otplug.loss import OTCollapseWarning

pytestmark = pytest.mark.filterwarnings("ignore::otplug.loss.OTCollapseWarning")

SEED_EXAMPLE = {
    "features": [
        {"src_key": "emb", "weight_label": 1, "term_name": "emb"},
        {"src_key": "action", "dim_slice": [0, 2], "weight_label": 0.5, "term_weight": 2, "term_name": "act"},
    ],
    "reg": 0.1,
    "tau_src": 0.05,
    "tau_tgt": 0.05,
    "heuristic": False,
}


def example_batches(dtype=torch.float64):
    src = {
        "emb": torch.tensor([[0, 0], [1, 0], [0, 2]], dtype=dtype),
        "action": torch.tensor([[[i, 0, 9], [i, 1, 9]] for i in range(3)], dtype=dtype),
    }
    tgt = {
        "emb": torch.tensor([[0.1, 0], [1, 0.2], [0.5, 1.5]], dtype=dtype),
        "action": torch.tensor([[[t, 0, 5], [t, 1, 5]] for t in (0, 1.5, 2)], dtype=dtype),
    }
    return src, tgt


def with_solver(cfg, solver, **kw):
    return attrs.evolve(otplug.load_config(cfg), solver=solver, solver_options=None, **kw)


@pytest.mark.parametrize("solver", ["pot", "pot-torch", "sinkhorn"])
def test_worked_example(solver):
    ot = otplug.OTLoss(with_solver(SEED_EXAMPLE, solver))
    res = ot(*example_batches())
    expected_M = [[0.01, 5.54, 10.5], [2.81, 0.54, 4.5], [12.01, 4.74, 0.5]]
    np.testing.assert_allclose(res.cost.detach().numpy(), expected_M, rtol=0, atol=1e-12)
    tol = 1e-9 if solver.startswith("pot") else 1e-6
    assert res.metrics["ot_loss"] == pytest.approx(1.671347742662e-02, rel=tol)
    assert res.metrics["ot_pi_sum"] == pytest.approx(2.117951650508e-01, rel=tol)
    assert res.metrics["ot_cost/emb"] == pytest.approx(1.738888888889, abs=1e-9)
    assert res.metrics["ot_cost/act"] == pytest.approx(1.416666666667, abs=1e-9)
    assert res.loss.ndim == 0
    assert {"ot_pi_diag", "ot_solver/iterations", "ot_solver/converged", "ot_collapsed", "ot_fallback",
            "ot_headroom"} <= set(res.metrics)


@pytest.mark.parametrize("solver", ["pot", "sinkhorn"])
def test_worked_example_heuristic(solver):
    ot = otplug.OTLoss(with_solver({**SEED_EXAMPLE, "heuristic": True}, solver))
    res = ot(*example_batches())
    assert res.metrics["ot_loss"] == pytest.approx(2.894859170244e-02, rel=1e-9 if solver == "pot" else 1e-6)
    off_diag = res.plan - torch.diag(torch.diagonal(res.plan))
    assert float(off_diag.abs().max()) == 0.0


def test_gradient_wrt_cost_is_the_plan():
    ot = otplug.OTLoss(with_solver(SEED_EXAMPLE, "pot"))
    src, tgt = example_batches()
    src["emb"].requires_grad_(True)
    res = ot(src, tgt)
    # label terms are detached: no gradient reaches raw inputs
    assert not res.loss.requires_grad
    M = res.cost.detach().clone().requires_grad_(True)
    res2 = ot.from_cost(M)
    res2.loss.backward()
    torch.testing.assert_close(M.grad, res2.plan, rtol=0, atol=0)
    torch.testing.assert_close(res2.plan, res.plan)
    # and through an encoder: d loss / d M = plan at the composed M
    enc_cfg = {"terms": [{"type": "embedding", "name": "e", "src_key": "emb"}], "solver": "pot", "reg": 0.5}
    ot = otplug.OTLoss(enc_cfg)
    res = ot(src, tgt, encoder=ToyEncoder())
    res.cost.retain_grad()
    res.loss.backward()
    torch.testing.assert_close(res.cost.grad, res.plan, rtol=0, atol=0)


class ToyEncoder(torch.nn.Module):
    def __init__(self, d_in=2, d_out=4):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d_out, dtype=torch.float64)
        self.calls = []

    def encode_feature_for_ot(self, key, x):
        self.calls.append(key)
        return self.lin(x)


def test_embedding_term_carries_gradient_to_encoder_and_caches():
    cfg = {"terms": [{"type": "embedding", "name": "e1", "src_key": "emb"},
                     {"type": "embedding", "name": "e2", "src_key": "emb", "weight_label": 1.0}],
           "solver": "pot", "reg": 0.1}
    ot = otplug.OTLoss(cfg)
    enc = ToyEncoder()
    src, tgt = example_batches()
    res = ot(src, tgt, encoder=enc)
    res.loss.backward()
    assert enc.lin.weight.grad is not None and float(enc.lin.weight.grad.abs().sum()) > 0
    assert enc.calls == ["emb", "emb"]  # once per side, shared by both terms
    assert ot.embedding_keys == {"emb"}


def test_encoder_exceptions_propagate():
    class Boom:
        def encode_feature_for_ot(self, key, x):
            raise RuntimeError("encoder exploded")

    ot = otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "emb"}]})
    with pytest.raises(RuntimeError, match="encoder exploded"):
        ot(*example_batches(), encoder=Boom())


def test_embedding_without_encoder_is_an_error():
    ot = otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "emb"}]})
    with pytest.raises(OtplugError, match="no encoder"):
        ot(*example_batches())


def test_policy_without_method_or_adapter_is_an_error():
    class Policy(torch.nn.Module):
        class config:
            type = "no-such-policy"

    ot = otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "emb"}]})
    with pytest.raises(otplug.UnknownComponentError, match="no-such-policy"):
        ot(*example_batches(), encoder=Policy())


def test_ddp_like_wrapper_is_unwrapped():
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    Wrapper.__name__ = "DistributedDataParallel"
    enc = ToyEncoder()
    ot = otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "emb"}]})
    ot(*example_batches(), encoder=Wrapper(enc))
    assert enc.calls


def test_missing_key_shape_mismatch_and_nonfinite():
    ot = otplug.OTLoss(SEED_EXAMPLE)
    src, tgt = example_batches()
    with pytest.raises(BatchError, match=r"tgt batch has no key 'emb'.*available keys: action"):
        ot(src, {"action": tgt["action"]})
    bad = dict(tgt, emb=torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(BatchError, match=r"\(3, 2\).*\(3, 5\)"):
        ot(src, bad)
    nan = dict(src, emb=src["emb"].clone())
    nan["emb"][1, 0] = float("nan")
    with pytest.raises(BatchError, match=r"src batch\['emb'\] has 1 non-finite"):
        ot(nan, tgt)
    with pytest.raises(BatchError, match="dim_slice"):
        ot(dict(src, action=src["action"][..., :1]), dict(tgt, action=tgt["action"][..., :1]))


def test_action_slice_excludes_padded_steps():
    cfg = {"terms": [{"type": "action-slice", "name": "act", "dim_slice": [0, 2]}], "solver": "pot", "reg": 0.1}
    ot = otplug.OTLoss(cfg)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    pad_a = torch.zeros(4, 5, dtype=torch.bool)
    pad_b = torch.zeros(3, 5, dtype=torch.bool)
    pad_a[0, 3:] = True
    pad_b[2, 4:] = True
    res = ot({"action": a, "action_is_pad": pad_a}, {"action": b, "action_is_pad": pad_b})
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for i in range(4):
        for j in range(3):
            valid = ~pad_a[i] & ~pad_b[j]
            expected[i, j] = ((a[i, valid, :2] - b[j, valid, :2]) ** 2).sum()
    torch.testing.assert_close(res.cost, expected)
    # without masks: identical to the label term on the flattened slice
    res_nomask = ot({"action": a}, {"action": b})
    label = otplug.OTLoss({"terms": [{"type": "label", "name": "l", "src_key": "action", "dim_slice": [0, 2]}],
                           "solver": "pot", "reg": 0.1})
    torch.testing.assert_close(res_nomask.cost, label({"action": a}, {"action": b}).cost)


@pytest.mark.parametrize("reduce,pick", [("first", lambda x: x[:, 0]), ("last", lambda x: x[:, -1]),
                                         ("mean", lambda x: x.mean(1)), ("flatten", lambda x: x.flatten(1))])
def test_time_reducers_apply_to_label_path(reduce, pick):
    cfg = {"terms": [{"type": "label", "name": "s", "src_key": "observation.state"}], "time_reduce": reduce,
           "solver": "pot"}
    ot = otplug.OTLoss(cfg)
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    y = torch.randn(3, 4, 2, dtype=torch.float64)
    res = ot({"observation.state": x}, {"observation.state": y})
    torch.testing.assert_close(res.cost, torch.cdist(pick(x), pick(y)) ** 2)


def test_last_respects_padding_on_embedding_path():
    cfg = {"terms": [{"type": "embedding", "name": "s", "src_key": "observation.state"}],
           "time_reduce": "last", "solver": "pot"}
    enc = ToyEncoder()
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    res = otplug.OTLoss(cfg)({"observation.state": x, "observation.state_is_pad": pad},
                             {"observation.state": x}, encoder=enc)
    with torch.no_grad():
        fx = enc.lin(x)
        src_last = torch.stack([fx[0, 1], fx[1, 2]])
        torch.testing.assert_close(res.cost, torch.cdist(src_last, fx[:, -1]) ** 2)


def test_image_term_uses_exact_camera_key():
    cfg = {"terms": [{"type": "image", "name": "cam", "src_key": "observation.images.front",
                      "use_learned_embed": False, "weight_label": 1.0}], "solver": "pot"}
    ot = otplug.OTLoss(cfg)
    img = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(BatchError, match="no key 'observation.images.front'"):
        ot({"observation.images.wrist": img}, {"observation.images.wrist": img})
    res = ot({"observation.images.front": img}, {"observation.images.front": img})
    assert res.cost.shape == (2, 2)


def test_collapse_is_reported_never_silent():
    # costs far larger than reg: POT underflows to an all-zero plan
    cfg = {"terms": [{"type": "label", "name": "l", "src_key": "x"}], "reg": 0.001, "tau_src": 0.01,
           "tau_tgt": 0.01, "solver": "pot"}
    ot = otplug.OTLoss(cfg)
    x = torch.zeros(4, 2, dtype=torch.float64)
    y = torch.full((4, 2), 5.0, dtype=torch.float64)
    with pytest.warns(OTCollapseWarning, match="sinkhorn"):
        res = ot({"x": x}, {"x": y})
    assert res.metrics["ot_collapsed"] == 1.0 and res.metrics["ot_fallback"] == 0.0
    uniform = otplug.OTLoss(attrs.evolve(ot.config, on_collapse="uniform"))
    with pytest.warns(OTCollapseWarning, match="uniform"):
        res = uniform({"x": x}, {"x": y})
    assert res.metrics["ot_fallback"] == 1.0 and res.metrics["ot_pi_sum"] == pytest.approx(1.0)
    raising = otplug.OTLoss(attrs.evolve(ot.config, on_collapse="raise"))
    with pytest.raises(OtplugError, match="collapsed"):
        raising({"x": x}, {"x": y})


def test_cost_normalization_scales_the_cost():
    cfg = {"terms": [{"type": "label", "name": "l", "src_key": "emb"}], "cost_normalization": "max",
           "solver": "pot"}
    res = otplug.OTLoss(cfg)(*example_batches())
    assert float(res.cost.max()) == pytest.approx(1.0)
    assert res.metrics["ot_cost_scale"] == pytest.approx(4.24)


def test_required_keys():
    ot = otplug.OTLoss(SEED_EXAMPLE)
    assert ot.required_keys("src") == {"emb", "action"} == ot.required_keys("tgt")


def test_third_party_term_through_config(otplug_registry):
    cfg = {"terms": [{"type": "cosine", "name": "cos", "src_key": "emb", "use_learned_embed": False}],
           "solver": "pot"}
    res = otplug.OTLoss(cfg)(*example_batches())
    x, y = example_batches()[0]["emb"], example_batches()[1]["emb"]
    xn = torch.nn.functional.normalize(x, dim=-1)
    yn = torch.nn.functional.normalize(y, dim=-1)
    torch.testing.assert_close(res.cost, 1 - xn @ yn.T)
    assert "ot_cost/cos" in res.metrics


def test_inline_term_plugin_with_plain_tensor_cost(otplug_registry):
    @attrs.frozen(kw_only=True)
    class ConstConfig:
        value: float = 1.0

        def contributes(self):
            return self.value > 0

    class Const:
        def __init__(self, options):
            self.options = options

        def cost(self, src, tgt, ctx):
            n, m = ctx.value(src, "emb", "src").shape[0], ctx.value(tgt, "emb", "tgt").shape[0]
            return torch.full((n, m), self.options.value, dtype=torch.float64)

    class Inline:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="const", factory=Const, config_cls=ConstConfig, summary="constant")]

    otplug_registry.register(Inline(), name="inline")
    res = otplug.OTLoss({"terms": [{"type": "const", "name": "c", "value": 2.0, "weight": 0.5}],
                         "solver": "pot"})(*example_batches())
    torch.testing.assert_close(res.cost, torch.ones(3, 3, dtype=torch.float64))


def test_iteration_cap_is_warned_and_in_metrics():
    from otplug.loss import OTSolverWarning

    cfg = {"terms": [{"type": "label", "name": "l", "src_key": "emb"}], "solver": "pot", "reg": 0.01,
           "tau_src": 10.0, "tau_tgt": 10.0, "solver_options": {"max_iter": 3}}
    with pytest.warns(OTSolverWarning, match="iteration cap"):
        res = otplug.OTLoss(cfg)(*example_batches())
    assert res.metrics["ot_solver/converged"] == 0.0 and res.metrics["ot_solver/iterations"] <= 3


def test_raw_keys_exclude_embedding_only_terms():
    cfg = {"terms": [{"type": "image", "name": "cam", "src_key": "observation.images.front"},
                     {"type": "embedding", "name": "st", "src_key": "observation.state", "weight_label": 1.0},
                     {"type": "action-slice", "name": "act"}]}
    ot = otplug.OTLoss(cfg)
    assert ot.required_keys("src") == {"observation.images.front", "observation.state", "action"}
    assert ot.raw_keys("src") == {"observation.state", "action"}


def test_embed_norm_l2_is_scale_free():
    cfg = {"terms": [{"type": "embedding", "name": "e", "src_key": "emb", "embed_norm": "l2"}], "solver": "pot",
           "reg": 0.5}
    enc = ToyEncoder()
    src, tgt = example_batches()
    small = ToyEncoder()
    with torch.no_grad():
        small.lin.weight.copy_(enc.lin.weight * 1e-3)
        small.lin.bias.copy_(enc.lin.bias * 1e-3)
    a = otplug.OTLoss(cfg)(src, tgt, encoder=enc).cost
    b = otplug.OTLoss(cfg)(src, tgt, encoder=small).cost
    torch.testing.assert_close(a, b)
    assert float(a.detach().max()) <= 4.0
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]\.embed_norm"):
        otplug.load_config({"terms": [{"type": "embedding", "src_key": "emb", "embed_norm": "L2"}]})


def test_optional_keys_include_pad_masks_and_custom_pad_key():
    cfg = {"terms": [{"type": "action-slice", "name": "a", "src_key": "action.ee", "pad_key": "action_is_pad"},
                     {"type": "label", "name": "s", "src_key": "observation.state"}]}
    ot = otplug.OTLoss(cfg)
    assert ot.optional_keys("src") == {"action.ee_is_pad", "observation.state_is_pad", "action_is_pad"}


def test_embedding_scale_is_reported():
    cfg = {"terms": [{"type": "embedding", "name": "e", "src_key": "emb"}], "solver": "pot", "reg": 0.5}
    enc = ToyEncoder()
    src, tgt = example_batches()
    res = otplug.OTLoss(cfg)(src, tgt, encoder=enc)
    with torch.no_grad():
        feats = torch.cat([enc.lin(src["emb"]), enc.lin(tgt["emb"])])
    assert res.metrics["ot_embed_scale/e"] == pytest.approx(float(feats.pow(2).sum(-1).mean()))
