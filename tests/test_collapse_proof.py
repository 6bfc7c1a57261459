"""Scale collapse (issue 12) and the options against it: the normalised cost (gradient through the norm),
stop-gradient sides and the EMA target encoder, the variance/covariance floor, the debiased loss."""

from __future__ import annotations

import json

import attrs
import numpy as np
import ot as pot
import pytest
import torch

import otplug
from otplug.ema import EMAEncoder
from otplug.errors import OtplugError
from otplug.terms.regularize import VAR_EPS, cov_offdiag, var_hinge

pytestmark = pytest.mark.filterwarnings("ignore::otplug.loss.OTCollapseWarning")


class Identity:
    """Features = the batch values themselves, with whatever gradient they carry."""

    def encode_feature_for_ot(self, key, x):
        return x


class Scaled:
    """Features = c * x, with c a parameter (the "shrink everything" direction)."""

    def __init__(self, c=1.0):
        self.c = torch.tensor(c, dtype=torch.float64, requires_grad=True)

    def encode_feature_for_ot(self, key, x):
        return self.c * x


class Linear(torch.nn.Module):
    def __init__(self, d_in=3, d_out=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(d_in, d_out, generator=g, dtype=torch.float64))

    def encode_feature_for_ot(self, key, x):
        return x @ self.W


def clouds(n=6, m=5, d=3, seed=0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.7 + shift
    return x, y


def embed_cfg(**term):
    return {"terms": [{"type": "embedding", "name": "e", "src_key": "emb", **term}], "reg": 0.5,
            "tau_src": 1.0, "tau_tgt": 1.0}


# -- 1. the normalised cost ----------------------------------------------------------------------------------
def test_l2_cost_gradcheck_through_the_normalisation():
    ot = otplug.OTLoss(embed_cfg(embed_norm="l2"))
    x, y = clouds(4, 3)
    x.requires_grad_(True)
    y.requires_grad_(True)

    def cost(a, b):
        return ot({"emb": a}, {"emb": b}, encoder=Identity()).cost

    assert torch.autograd.gradcheck(cost, (x, y), eps=1e-6, atol=1e-7)
    # it is exactly |x/|x| - y/|y||^2 = 2 - 2 cos
    c = cost(x, y).detach()
    cos = torch.nn.functional.cosine_similarity(x.detach()[:, None], y.detach()[None], dim=-1)
    torch.testing.assert_close(c, 2 - 2 * cos)


def test_l2_cost_is_scale_free_and_shrinking_no_longer_lowers_the_loss():
    x, y = clouds()
    results = {}
    for norm in ("none", "l2"):
        losses = []
        for c in (1e-3, 1.0, 1e3):
            enc = Scaled(c)
            res = otplug.OTLoss(embed_cfg(embed_norm=norm))({"emb": x}, {"emb": y}, encoder=enc)
            res.loss.backward()
            losses.append((float(res.loss.detach()), float(enc.c.grad), res.cost.detach()))
        results[norm] = losses
    # normalised: the same cost and loss at every scale, and d loss / d c = 0
    for loss, grad, cost in results["l2"]:
        torch.testing.assert_close(cost, results["l2"][1][2])
        assert loss == pytest.approx(results["l2"][1][0], rel=1e-9)
    assert abs(results["l2"][1][1]) < 1e-12 * max(1.0, results["l2"][1][0])
    # plain squared distance: M scales with c^2 and d loss / d c = 2 loss / c > 0 -- shrinking pays (the loss at
    # c = 1e-3 is not exactly 1e-6 of the loss at c = 1: the unbalanced plan carries more mass on smaller costs)
    loss1, grad1, _ = results["none"][1]
    assert grad1 == pytest.approx(2 * loss1, rel=1e-9) and grad1 > 0
    torch.testing.assert_close(results["none"][0][2], 1e-6 * results["none"][1][2])
    assert results["none"][0][0] < 1e-3 * loss1


# -- 2. which side receives gradients ------------------------------------------------------------------------
@pytest.mark.parametrize("grad", ["both", "source", "target"])
def test_stop_gradient_sides(grad):
    x, y = clouds()
    x.requires_grad_(True)
    y.requires_grad_(True)
    res = otplug.OTLoss(embed_cfg(grad=grad, embed_norm="l2"))({"emb": x}, {"emb": y}, encoder=Identity())
    res.loss.backward()
    src_gets, tgt_gets = grad in ("both", "source"), grad in ("both", "target")
    assert (x.grad is not None and float(x.grad.abs().max()) > 0) == src_gets
    assert (y.grad is not None and float(y.grad.abs().max()) > 0) == tgt_gets
    if not src_gets:
        assert x.grad is None
    if not tgt_gets:
        assert y.grad is None


def test_stop_gradient_keeps_the_cost_and_the_one_sided_gradient():
    x, y = clouds()
    both_x = x.clone().requires_grad_(True)
    src_x = x.clone().requires_grad_(True)
    both = otplug.OTLoss(embed_cfg())({"emb": both_x}, {"emb": y.clone().requires_grad_(True)}, encoder=Identity())
    one = otplug.OTLoss(embed_cfg(grad="source"))({"emb": src_x}, {"emb": y.clone().requires_grad_(True)},
                                                   encoder=Identity())
    torch.testing.assert_close(both.cost.detach(), one.cost.detach())
    both.loss.backward()
    one.loss.backward()
    torch.testing.assert_close(both_x.grad, src_x.grad)


def test_grad_options_are_validated():
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]\.grad"):
        otplug.load_config(embed_cfg(grad="tgt"))
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]\.stopgrad_encoder: 'ema' .* grad = 'both'"):
        otplug.load_config(embed_cfg(stopgrad_encoder="ema"))
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]\.grad: acts on the policy's encoder features"):
        otplug.load_config(embed_cfg(weight_embed=0, weight_label=1, grad="source"))
    with pytest.raises(otplug.ConfigError, match=r"use_learned_embed = false"):
        otplug.load_config({"terms": [{"type": "image", "src_key": "observation.images.front",
                                       "use_learned_embed": False, "weight_label": 1, "variance_floor": 1.0}]})
    cfg = otplug.load_config(embed_cfg(grad="target", stopgrad_encoder="ema"))
    assert cfg.terms[0].options.grad == "target" and cfg.ema_decay == 0.99
    assert otplug.load_config(otplug.config.dump_config(cfg)) == cfg


# -- the EMA target encoder ----------------------------------------------------------------------------------
def test_ema_update_math():
    enc = Linear()
    ema = EMAEncoder(enc, decay=0.9)
    w0 = enc.W.detach().clone()
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    torch.testing.assert_close(ema.module.W, w0, rtol=0, atol=0)
    with torch.no_grad():
        enc.W.add_(1.0)
    ema.update(enc)
    torch.testing.assert_close(ema.module.W, 0.9 * w0 + 0.1 * (w0 + 1.0), rtol=0, atol=1e-15)
    e1 = ema.module.W.detach().clone()
    with torch.no_grad():
        enc.W.mul_(-2.0)
    ema.update(enc, 0.75)
    torch.testing.assert_close(ema.module.W, 0.75 * e1 + 0.25 * enc.W.detach(), rtol=0, atol=1e-15)
    ema.update(enc, 1.0)  # frozen
    torch.testing.assert_close(ema.module.W, 0.75 * e1 + 0.25 * enc.W.detach(), rtol=0, atol=1e-15)
    ema.update(enc, 0.0)  # a copy
    torch.testing.assert_close(ema.module.W, enc.W.detach(), rtol=0, atol=0)
    assert ema.updates == 4 and enc.W.requires_grad
    with pytest.raises(OtplugError, match=r"\[0, 1\]"):
        ema.update(enc, 1.5)
    with pytest.raises(OtplugError, match="parameters differ"):
        ema.update(torch.nn.Linear(2, 2))
    # buffers are copied; the state round-trips
    bn = torch.nn.BatchNorm1d(3)
    ema_bn = EMAEncoder(bn, decay=0.5)
    bn(torch.randn(8, 3))
    ema_bn.update(bn)
    torch.testing.assert_close(ema_bn.module.running_mean, bn.running_mean, rtol=0, atol=0)
    other = EMAEncoder(enc)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.module.W, ema.module.W, rtol=0, atol=0)
    assert other.updates == 4


def test_ema_wrapped_module_is_unwrapped():
    class Wrapper(torch.nn.Module):  # like DDP: the policy under .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    enc = Linear()
    ema = EMAEncoder(Wrapper(enc), decay=0.5)
    assert isinstance(ema.module, Linear)
    with torch.no_grad():
        enc.W.add_(2.0)
    ema.update(Wrapper(enc))
    torch.testing.assert_close(ema.module.W, enc.W.detach() - 1.0)


@pytest.mark.parametrize("grad", ["source", "target"])
def test_ema_encoder_gives_the_constant_side(grad):
    x, y = clouds()
    enc = Linear()
    ema = EMAEncoder(enc)
    with torch.no_grad():
        enc.W.mul_(3.0)  # the policy has moved on; the EMA copy lags behind
    ot = otplug.OTLoss(embed_cfg(grad=grad, stopgrad_encoder="ema"))
    assert ot.needs_ema_encoder and not otplug.OTLoss(embed_cfg(grad=grad)).needs_ema_encoder
    res = ot({"emb": x}, {"emb": y}, encoder=enc, ema_encoder=ema)
    fx, fy = (x @ enc.W, y @ ema.module.W) if grad == "source" else (x @ ema.module.W, y @ enc.W)
    torch.testing.assert_close(res.cost.detach(), torch.cdist(fx, fy).detach() ** 2)
    res.loss.backward()
    assert enc.W.grad is not None and float(enc.W.grad.abs().max()) > 0
    assert ema.module.W.grad is None
    # the gradient is the one-sided gradient with the EMA features as constants
    W = enc.W.detach().clone().requires_grad_(True)
    fx, fy = (x @ W, (y @ ema.module.W).detach()) if grad == "source" else ((x @ ema.module.W).detach(), y @ W)
    ((torch.cdist(fx, fy) ** 2) * res.plan).sum().backward()
    torch.testing.assert_close(enc.W.grad, W.grad)
    # the module itself works as ema_encoder too; without one the error says what to do
    res2 = ot({"emb": x}, {"emb": y}, encoder=enc, ema_encoder=ema.module)
    torch.testing.assert_close(res2.cost, res.cost)
    with pytest.raises(OtplugError, match="ema_encoder=ema"):
        ot({"emb": x}, {"emb": y}, encoder=enc)


# -- 3. variance / covariance floor --------------------------------------------------------------------------
def test_variance_hinge_known_values():
    g = torch.Generator().manual_seed(0)
    iso = 2.0 * torch.randn(20000, 4, generator=g, dtype=torch.float64)
    assert float(var_hinge(iso, 1.0)) == 0.0  # std 2 > gamma 1 in every dimension
    collapsed = torch.ones(10, 4, dtype=torch.float64) * 3.0
    assert float(var_hinge(collapsed, 1.0)) == pytest.approx(1.0 - VAR_EPS ** 0.5, abs=1e-15)  # = gamma - 0.01
    assert float(var_hinge(collapsed, 0.5)) == pytest.approx(0.5 - 0.01, abs=1e-15)
    half = torch.cat([iso[:, :2], collapsed.repeat(2000, 1)[:, :2]], dim=1)  # two healthy, two collapsed dims
    assert float(var_hinge(half, 1.0)) == pytest.approx((1.0 - 0.01) / 2, abs=1e-12)
    # the gradient pushes a collapsed dimension apart
    z = (collapsed + 1e-3 * torch.randn(10, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    var_hinge(z, 1.0).backward()
    with torch.no_grad():
        assert float(var_hinge(z - 1e-2 * z.grad, 1.0)) < float(var_hinge(z, 1.0))


def test_covariance_known_values_and_gram_path():
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    # columns identical: var = 4/3, C_12 = 4/3, (1/d) sum_{i != j} C_ij^2 = 2 (4/3)^2 / 2
    assert float(cov_offdiag(z)) == pytest.approx(16 / 9, rel=1e-12)
    assert float(cov_offdiag(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))) == 0.0
    g = torch.Generator().manual_seed(1)
    for n, d in ((6, 40), (40, 6)):
        w = torch.randn(n, d, generator=g, dtype=torch.float64)
        c = torch.cov(w.T)
        direct = (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
        assert float(cov_offdiag(w)) == pytest.approx(float(direct), rel=1e-10)


def test_variance_covariance_regulariser_in_the_loss():
    x, y = clouds(8, 8, d=3)
    x = x * 0.01  # nearly collapsed source features
    x.requires_grad_(True)
    y.requires_grad_(True)
    cfg = embed_cfg(variance_floor=1.0, variance_weight=2.0, covariance_weight=0.5)
    res = otplug.OTLoss(cfg)({"emb": x}, {"emb": y}, encoder=Identity())
    z = torch.cat([x, y]).detach()
    hinge, cov = float(var_hinge(z, 1.0)), float(cov_offdiag(z))
    assert res.metrics["ot_var_reg/e"] == pytest.approx(hinge, rel=1e-12)
    assert res.metrics["ot_cov_reg/e"] == pytest.approx(cov, rel=1e-12)
    assert res.metrics["ot_reg_loss"] == pytest.approx(2.0 * hinge + 0.5 * cov, rel=1e-12)
    transport = float((res.plan * res.cost).sum().detach())
    assert res.metrics["ot_loss"] == pytest.approx(transport, rel=1e-12)
    assert float(res.loss.detach()) == pytest.approx(transport + 2.0 * hinge + 0.5 * cov, rel=1e-12)
    assert res.regularizer is not None and res.regularizer.requires_grad
    res.loss.backward()
    xr, yr = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    zr = torch.cat([xr, yr])
    expect = (res.plan * torch.cdist(xr, yr) ** 2).sum() + 2.0 * var_hinge(zr, 1.0) + 0.5 * cov_offdiag(zr)
    expect.backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(y.grad, yr.grad)
    # defaults: no regulariser, the loss is the transport cost alone
    plain = otplug.OTLoss(embed_cfg())({"emb": x}, {"emb": y}, encoder=Identity())
    assert plain.regularizer is None and "ot_reg_loss" not in plain.metrics
    with pytest.raises(otplug.ConfigError, match=r"variance_weight: is 0"):
        otplug.load_config(embed_cfg(variance_floor=1.0, variance_weight=0.0))


def test_regulariser_follows_the_stop_gradient_side():
    x, y = clouds(8, 8)
    x.requires_grad_(True)
    y.requires_grad_(True)
    res = otplug.OTLoss(embed_cfg(grad="source", variance_floor=5.0, covariance_weight=1.0))(
        {"emb": x}, {"emb": y}, encoder=Identity())
    res.loss.backward()
    assert x.grad is not None and y.grad is None


# -- 4. the debiased loss -----------------------------------------------------------------------------------
DEBIAS_CFG = {
    "terms": [
        {"type": "label", "name": "s", "src_key": "state", "weight": 0.7, "dim_slice": [0, 2]},
        {"type": "embedding", "name": "e", "src_key": "emb", "weight": 1.3, "weight_label": 0.2},
        {"type": "action-slice", "name": "a", "weight": 0.4, "dim_slice": [0, 2]},
    ],
    "reg": 0.3, "tau_src": 0.5, "tau_tgt": 2.0, "debias": True,
}


def debias_batches(seed=3, n=5, m=4):
    g = torch.Generator().manual_seed(seed)
    src = {"state": torch.randn(n, 3, generator=g, dtype=torch.float64),
           "emb": torch.randn(n, 3, generator=g, dtype=torch.float64),
           "action": torch.randn(n, 4, 3, generator=g, dtype=torch.float64)}
    tgt = {"state": torch.randn(m, 3, generator=g, dtype=torch.float64) + 0.5,
           "emb": torch.randn(m, 3, generator=g, dtype=torch.float64) * 1.5,
           "action": torch.randn(m, 4, 3, generator=g, dtype=torch.float64) - 0.3}
    src["action_is_pad"] = torch.zeros(n, 4, dtype=torch.bool)
    src["action_is_pad"][0, 3] = True
    tgt["action_is_pad"] = torch.zeros(m, 4, dtype=torch.bool)
    tgt["action_is_pad"][1, 2:] = True
    return src, tgt


def numpy_cost(p, q, enc_w):
    """The three terms' weighted cost between batches p and q, in NumPy (independent of otplug)."""
    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    s = sq(p["state"][:, :2], q["state"][:, :2])
    e = sq(p["emb"] @ enc_w, q["emb"] @ enc_w) + 0.2 * sq(p["emb"], q["emb"])
    a, b = p["action"][..., :2], q["action"][..., :2]
    va, vb = ~p["action_is_pad"], ~q["action_is_pad"]
    act = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            both = va[i] & vb[j]
            act[i, j] = ((a[i, both] - b[j, both]) ** 2).sum()
    return 0.7 * s + 1.3 * e + 0.4 * act


def pot_transport(M, reg, tau):
    n, m = M.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    plan = pot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m=tau, reg_type="kl", c=np.outer(a, b),
                                              numItermax=100000, stopThr=1e-13)
    return plan, float((plan * M).sum())


@pytest.mark.parametrize("solver", ["sinkhorn", "pot"])
def test_debiased_loss_matches_an_independent_computation(solver):
    src, tgt = debias_batches()
    enc = Linear(3, 4, seed=5)
    cfg = dict(DEBIAS_CFG, solver=solver)
    cfg["solver_options"] = {"tol": 1e-12 if solver == "sinkhorn" else 1e-13, "max_iter": 100000}
    res = otplug.OTLoss(cfg)(src, tgt, encoder=enc)
    p = {k: v.numpy() for k, v in src.items()}
    q = {k: v.numpy() for k, v in tgt.items()}
    w = enc.W.detach().numpy()
    tau = (0.5, 2.0)
    Mxy, Mxx, Myy = numpy_cost(p, q, w), numpy_cost(p, p, w), numpy_cost(q, q, w)
    np.testing.assert_allclose(res.cost.detach().numpy(), Mxy, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.within_costs["src"].detach().numpy(), Mxx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.within_costs["tgt"].detach().numpy(), Myy, rtol=1e-12, atol=1e-12)
    pxy, oxy = pot_transport(Mxy, 0.3, tau)
    pxx, oxx = pot_transport(Mxx, 0.3, tau)
    pyy, oyy = pot_transport(Myy, 0.3, tau)
    S = oxy - 0.5 * oxx - 0.5 * oyy
    rel = 1e-9 if solver == "pot" else 1e-7
    assert float(res.loss.detach()) == pytest.approx(S, rel=rel)
    assert res.metrics["ot_loss"] == pytest.approx(S, rel=rel)
    assert res.metrics["ot_debias/xy"] == pytest.approx(oxy, rel=rel)
    assert res.metrics["ot_debias/xx"] == pytest.approx(oxx, rel=rel)
    assert res.metrics["ot_debias/yy"] == pytest.approx(oyy, rel=rel)
    assert res.metrics["ot_solver/converged"] == 1.0
    np.testing.assert_allclose(res.within_plans["src"].numpy(), pxx, rtol=1e-6, atol=1e-12)
    # gradient: the plans are constants, d S / d W = sum pi_xy dM_xy - 1/2 (...xx + ...yy)
    res.loss.backward()
    W = enc.W.detach().clone().requires_grad_(True)

    def embed_part(u, v):
        return 1.3 * torch.cdist(u @ W, v @ W) ** 2

    expect = ((torch.from_numpy(pxy) * embed_part(src["emb"], tgt["emb"])).sum()
              - 0.5 * (torch.from_numpy(pxx) * embed_part(src["emb"], src["emb"])).sum()
              - 0.5 * (torch.from_numpy(pyy) * embed_part(tgt["emb"], tgt["emb"])).sum())
    expect.backward()
    torch.testing.assert_close(enc.W.grad, W.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("extra", [{}, {"cost_normalization": "mean"}, {"term_normalization": "mean"},
                                   {"tau_src": 0.05, "tau_tgt": 7.0}])
def test_debiased_loss_of_a_batch_with_itself_is_zero(extra):
    src, _ = debias_batches()
    cfg = {**DEBIAS_CFG, **extra}
    res = otplug.OTLoss(cfg)(src, dict(src), encoder=Linear(3, 4, seed=5))
    assert abs(float(res.loss.detach())) < 1e-12


def test_debiasing_removes_the_entropic_bias_at_a_equals_b():
    # with reg of the order of the costs the plain loss of a batch with itself is far from 0: the entropic plan
    # spreads mass off the zero-cost diagonal; S removes exactly that
    src, _ = debias_batches()
    cfg = {**DEBIAS_CFG, "reg": 5.0, "tau_src": 10.0, "tau_tgt": 10.0}
    plain = otplug.OTLoss({**cfg, "debias": False})(src, dict(src), encoder=Linear(3, 4, seed=5))
    debiased = otplug.OTLoss(cfg)(src, dict(src), encoder=Linear(3, 4, seed=5))
    assert float(plain.loss.detach()) > 1.0
    assert abs(float(debiased.loss.detach())) < 1e-12


def test_debias_keeps_defaults_and_rejects_what_cannot_work(otplug_registry):
    cfg = otplug.load_config({"terms": [{"type": "label", "src_key": "x"}]})
    assert cfg.debias is False
    with pytest.raises(otplug.ConfigError, match=r"debias: has no effect with heuristic = true"):
        otplug.load_config({"terms": [{"type": "label", "src_key": "x"}], "debias": True, "heuristic": True})

    @attrs.frozen(kw_only=True)
    class NoWithinConfig:
        src_key: str

    class NoWithin:
        def __init__(self, config):
            self.config = config

        def cost(self, src, tgt, ctx):
            return ctx.sq_dist(ctx.label(src, "x", "src"), ctx.label(tgt, "x", "tgt"))

    class P:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="nowithin", factory=NoWithin, config_cls=NoWithinConfig, summary="t")]

    otplug_registry.register(P(), name="nowithin-plugin")
    from otplug.builtin import terms as builtin_terms

    otplug_registry.register(builtin_terms, name="builtin-terms")
    terms = [{"type": "label", "name": "ok", "src_key": "x"}, {"type": "nowithin", "name": "mine", "src_key": "x"}]
    x = torch.randn(3, 2, dtype=torch.float64)
    assert float(otplug.OTLoss({"terms": terms})({"x": x}, {"x": x + 1}).loss) > 0
    with pytest.raises(otplug.ConfigError, match=r"terms\[1\]: term 'mine' \(type 'nowithin'.*within_cost"):
        otplug.OTLoss({"terms": terms, "debias": True})


# -- 5. the collapse experiment -----------------------------------------------------------------------------
def _train_linear_encoder(embed_norm: str, steps: int = 200, lr: float = 0.05, adam: bool = False,
                          **term) -> float:
    g = torch.Generator().manual_seed(0)
    n, d_in, d_out = 16, 4, 3
    src = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    tgt = torch.randn(n, d_in, generator=g, dtype=torch.float64) @ torch.diag(
        torch.tensor([1.5, 0.5, 1.0, 2.0], dtype=torch.float64)) + 0.5
    enc = Linear(d_in, d_out, seed=1)
    start = float(enc.W.detach().norm())
    ot = otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "x", "embed_norm": embed_norm,
                                   **term}], "reg": 1.0, "tau_src": 1.0, "tau_tgt": 1.0})
    opt = torch.optim.Adam(enc.parameters(), lr=lr) if adam else torch.optim.SGD(enc.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        res = ot({"x": src}, {"x": tgt}, encoder=enc)
        res.loss.backward()
        opt.step()
    return float(enc.W.detach().norm()) / start


def test_plain_cost_collapses_and_normalised_cost_does_not():
    plain = _train_linear_encoder("none")
    normalised = _train_linear_encoder("l2")
    assert plain < 0.1, f"plain squared-Euclidean OT shrank |W| only to {plain:.3g} of its start"
    assert 0.5 <= normalised <= 2.0, f"normalised OT changed |W| to {normalised:.3g} of its start"


def test_adam_grows_normalised_features_and_the_scale_anchor_holds_both_directions():
    """With Adam (ACT's optimiser) the normalised cost's orthogonal gradient lengthens the features step after step
    (the demo: x55); ``scale_anchor`` holds the scale within 0.5-2x with the plain cost (no collapse) and with the
    normalised one (no growth)."""
    grown = _train_linear_encoder("l2", steps=300, lr=0.1, adam=True)  # 2.17 (deterministic: float64, fixed seeds)
    assert grown > 2.0, f"expected Adam to lengthen normalised features, |W| ratio {grown:.3g}"
    assert _train_linear_encoder("none", steps=300, lr=0.1, adam=True) < 1e-3  # and to collapse plain ones
    for norm in ("none", "l2"):
        held = _train_linear_encoder(norm, steps=300, lr=0.1, adam=True, scale_anchor=1.0)
        assert 0.5 <= held <= 2.0, f"scale_anchor with embed_norm={norm}: |W| ratio {held:.3g}"


def test_scale_anchor_reference_is_term_state():
    x, y = clouds()
    ot = otplug.OTLoss(embed_cfg(scale_anchor=2.0))
    enc = Scaled(1.0)
    res = ot({"emb": x}, {"emb": y}, encoder=enc)
    assert res.metrics["ot_scale_drift/e"] == pytest.approx(1.0) and float(res.regularizer.detach()) == 0.0
    state = ot.state_dict()
    ref = float(torch.cat([x, y]).pow(2).sum(-1).mean())
    assert state == {"e": {"scale_ref": pytest.approx(ref)}}
    res = ot({"emb": x}, {"emb": y}, encoder=Scaled(0.5))  # features halved: s = s0 / 4
    assert res.metrics["ot_scale_drift/e"] == pytest.approx(0.25)
    assert float(res.regularizer.detach()) == pytest.approx(2.0 * np.log(0.25) ** 2)
    fresh = otplug.OTLoss(embed_cfg(scale_anchor=2.0))
    fresh.load_state_dict(state)  # a resumed run keeps the first run's reference
    assert fresh({"emb": x}, {"emb": y}, encoder=Scaled(0.5)).metrics["ot_scale_drift/e"] == pytest.approx(0.25)
    with pytest.raises(OtplugError, match="scale_anchor"):
        otplug.OTLoss({"terms": [{"type": "image", "name": "i", "src_key": "observation.images.a",
                                  "use_learned_embed": False, "weight_label": 1.0, "scale_anchor": 1.0}]})


def test_debiased_loss_at_large_reg_is_the_linear_mmd():
    """The study's MMD baseline (``cotrain-mmd``) is a config: with reg and tau far above the costs the plans tend
    to a b^T and S to the squared distance of the means, the linear-kernel MMD (Feydy et al. 2019)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randn(8, 5, generator=g, dtype=torch.float64) * 1.3 + 0.4
    mmd = float(((x.mean(0) - y.mean(0)) ** 2).sum())
    cfg = {"terms": [{"type": "label", "name": "f", "src_key": "f"}], "debias": True}
    gaps = []
    for reg in (10.0, 100.0, 1000.0):
        res = otplug.OTLoss({**cfg, "reg": reg, "tau_src": reg * 1e3, "tau_tgt": reg * 1e3})({"f": x}, {"f": y})
        gaps.append(abs(float(res.loss) - mmd) / mmd)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02, gaps
    from otplug.bench.study_config import MMD_LINEAR

    assert MMD_LINEAR["debias"] and MMD_LINEAR["reg"] >= 1000 and MMD_LINEAR["tau_src"] >= 1e3 * MMD_LINEAR["reg"]


def test_energy_mmd_config_is_geomloss_energy_distance():
    """The study's paper baseline (``cotrain-mmd``): the debiased loss with ``distance = "euclidean"`` at a large reg
    is the energy distance, value and gradient, as geomloss's SamplesLoss("energy") computes it."""
    geomloss = pytest.importorskip("geomloss")

    class Identity:  # the "encoder": features are the batch values
        def encode_feature_for_ot(self, key, x):
            return x

    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    y = (torch.randn(7, 5, generator=g, dtype=torch.float64) * 1.3 + 0.4).requires_grad_(True)
    cfg = {"terms": [{"type": "embedding", "name": "f", "src_key": "f", "weight_embed": 1.0,
                      "distance": "euclidean"}], "debias": True, "reg": 1.0e4, "tau_src": 1.0e8, "tau_tgt": 1.0e8}
    ours = otplug.OTLoss(cfg)({"f": x}, {"f": y}, encoder=Identity()).loss
    ref = geomloss.SamplesLoss("energy")(x, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-3)
    gx, gy = torch.autograd.grad(ours, (x, y))
    rx, ry = torch.autograd.grad(ref, (x, y))
    torch.testing.assert_close(gx, rx, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(gy, ry, rtol=2e-2, atol=1e-4)
    from otplug.bench.study_config import MMD_ENERGY

    assert MMD_ENERGY["debias"] and MMD_ENERGY["terms"][0]["distance"] == "euclidean"
    assert MMD_ENERGY["reg"] >= 1000 and MMD_ENERGY["tau_src"] >= 1e3 * MMD_ENERGY["reg"]


def test_term_normalization_divisor_has_a_floor_and_is_saved():
    """A term whose cost falls towards 0 is divided by at least 1% of its first mean (not by its own vanishing
    mean, which scaled its gradient up without bound: l2 + term_normalization grew features 2.4e11x on the demo);
    the reference is OTLoss state, restored by load_state_dict."""
    cfg = {"terms": [{"type": "label", "name": "a", "src_key": "x", "weight": 1.0},
                     {"type": "label", "name": "b", "src_key": "y", "weight": 1.0}],
           "reg": 0.5, "tau_src": 1.0, "tau_tgt": 1.0, "term_normalization": "mean"}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    loss = otplug.OTLoss(cfg)
    first = loss({"x": x, "y": y}, {"x": x + 1.0, "y": y - 1.0})
    assert first.metrics["ot_term_scale_floored/a"] == 0.0
    ref_a = float(first.term_costs["a"].mean())
    # term a's cost shrinks 1e4x: without the floor M_a / mean(M_a) would be O(1) again
    xs = x * 1e-2
    res = loss({"x": xs, "y": y}, {"x": xs + 1e-2, "y": y - 1.0})
    assert res.metrics["ot_term_scale_floored/a"] == 1.0 and res.metrics["ot_term_scale_floored/b"] == 0.0
    raw_a = res.term_costs["a"]
    assert float(raw_a.mean()) < 1e-3 * ref_a
    state = loss.state_dict()
    assert state["<otplug>"]["term_scale_refs"]["a"] == pytest.approx(ref_a)
    fresh = otplug.OTLoss(cfg)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    again = fresh({"x": xs, "y": y}, {"x": xs + 1e-2, "y": y - 1.0})
    assert again.metrics["ot_term_scale_floored/a"] == 1.0
    assert float(again.loss) == pytest.approx(float(res.loss), rel=1e-9)
    with pytest.raises(otplug.ConfigError, match="reserved"):
        otplug.OTLoss({**cfg, "terms": [{**cfg["terms"][0], "name": "<otplug>"}]})
