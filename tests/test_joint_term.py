"""The ``joint`` term (issue #29): DeepJDOT's joint cost for policies -- encoder features plus the source row's
action chunk against the policy's *predicted* chunk on the target row. Checked against an independent computation,
its gradient, its stop-gradient option, ACT's prediction (no label leak through the VAE) and the refusals."""

from __future__ import annotations

import pytest
import torch

import otplug
from otplug.errors import OtplugError

CAM = "observation.images.front"


class Policy(torch.nn.Module):
    """A toy policy with both halves of the encoder contract: features of a key, and a differentiable action chunk
    (T = 4 steps of D = 3) from the observation."""

    def __init__(self, T=4, D=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.enc = torch.nn.Linear(6, 5, dtype=torch.float64)
        self.head = torch.nn.Linear(5, T * D, dtype=torch.float64)
        for p in self.parameters():
            torch.nn.init.normal_(p, generator=g)
        self.T, self.D = T, D
        self.predicted_on: list[set[str]] = []

    def encode_feature_for_ot(self, key, x):
        return self.enc(x)

    def predict_action_for_ot(self, batch):
        self.predicted_on.append(set(batch))
        return self.head(torch.tanh(self.enc(batch["obs"]))).reshape(-1, self.T, self.D)


def _batches(n=5, m=6, T=4, D=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = {"obs": torch.randn(n, 6, generator=g, dtype=torch.float64),
           "action": torch.randn(n, T, D, generator=g, dtype=torch.float64),
           "action_is_pad": torch.zeros(n, T, dtype=torch.bool)}
    src["action_is_pad"][0, 3:] = True  # a chunk cut by its episode's end
    tgt = {"obs": torch.randn(m, 6, generator=g, dtype=torch.float64) + 0.5}  # no actions on the target side
    return src, tgt


def _cfg(**kw):
    term = {"type": "joint", "name": "j", "src_key": "obs", "weight_embed": 0.7, "weight_label": 1.3, **kw}
    return {"terms": [term], "solver": "pot", "reg": 50.0, "tau_src": 50.0, "tau_tgt": 50.0}


def _by_hand(policy, src, tgt, we=0.7, wl=1.3):
    """M_ij = we |g(x_i) - g(y_j)|^2 + wl sum_t v_it |a_i[t] - f(y_j)[t]|^2, with loops."""
    gx, gy = policy.enc(src["obs"]), policy.enc(tgt["obs"])
    pred = policy.head(torch.tanh(gy)).reshape(-1, policy.T, policy.D)
    valid = ~src["action_is_pad"]
    n, m = gx.shape[0], gy.shape[0]
    rows = []
    for i in range(n):
        row = []
        for j in range(m):
            feat = ((gx[i] - gy[j]) ** 2).sum()
            act = sum(((src["action"][i, t] - pred[j, t]) ** 2).sum() for t in range(policy.T) if valid[i, t])
            row.append(we * feat + wl * act)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_joint_cost_and_gradient_equal_an_independent_computation():
    policy = Policy()
    src, tgt = _batches()
    res = otplug.OTLoss(_cfg())(src, tgt, encoder=policy)
    M = _by_hand(policy, src, tgt)
    torch.testing.assert_close(res.cost, M, rtol=1e-6, atol=1e-9)
    # the gradient of sum(pi * M) into the policy (pi a constant), both parts
    res.loss.backward()
    got = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    (res.plan.detach() * _by_hand(policy, src, tgt)).sum().backward()
    for a, b in zip(got, (p.grad for p in policy.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert float(policy.head.weight.grad.abs().sum()) > 0  # the label part trains the action head
    # the target's own actions are never read: the prediction saw the observation only
    assert all("action" not in keys for keys in policy.predicted_on)
    assert res.metrics["ot_cost/j"] > 0 and "ot_pred_norm/j" in res.metrics


def test_stopgrad_prediction_moves_only_the_features():
    policy = Policy()
    src, tgt = _batches()
    res = otplug.OTLoss(_cfg(stopgrad_prediction=True))(src, tgt, encoder=policy)
    torch.testing.assert_close(res.cost, _by_hand(policy, src, tgt), rtol=1e-6, atol=1e-9)
    res.loss.backward()
    assert policy.head.weight.grad is None or float(policy.head.weight.grad.abs().sum()) == 0
    assert float(policy.enc.weight.grad.abs().sum()) > 0
    # label part alone with stop-gradient: nothing to train
    res = otplug.OTLoss(_cfg(weight_embed=0.0, stopgrad_prediction=True))(src, tgt, encoder=policy)
    assert not res.loss.requires_grad


def test_joint_config_errors_are_one_line():
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]: weight_embed and weight_label are both 0"):
        otplug.load_config(_cfg(weight_embed=0.0, weight_label=0.0))
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]"):
        otplug.load_config(_cfg(stopgrad_prediction="yes"))


def test_a_policy_without_prediction_is_refused_naming_the_contract():
    class FeaturesOnly(torch.nn.Module):
        def encode_feature_for_ot(self, key, x):
            return x

    src, tgt = _batches()
    with pytest.raises(OtplugError, match="predict_action_for_ot"):
        otplug.OTLoss(_cfg())(src, tgt, encoder=FeaturesOnly())


# ---------------------------------------------------------------------------------------------------------------------
# lerobot policies

def _features():
    from lerobot.configs.types import FeatureType, PolicyFeature

    inp = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(4,)),
           CAM: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32))}
    return inp, {"action": PolicyFeature(type=FeatureType.ACTION, shape=(3,))}


@pytest.mark.parametrize("use_vae", [True, False])
def test_act_predicts_the_inference_chunk_without_reading_the_rows_actions(use_vae):
    pytest.importorskip("lerobot")
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    from otplug.lerobot.adapters import ACTEncoder

    inp, out = _features()
    cfg = ACTConfig(input_features=inp, output_features=out, device="cpu", pretrained_backbone_weights=None,
                    dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_vae_encoder_layers=1,
                    chunk_size=5, n_action_steps=5, use_vae=use_vae, dropout=0.0)
    torch.manual_seed(0)
    policy = ACTPolicy(cfg).train()
    g = torch.Generator().manual_seed(3)
    batch = {"observation.state": torch.randn(4, 4, generator=g), CAM: torch.rand(4, 3, 32, 32, generator=g),
             "action": torch.randn(4, 5, 3, generator=g)}
    enc = ACTEncoder(policy)
    assert enc.prediction_problem() is None
    p1 = enc.predict_action_for_ot(batch)
    p2 = enc.predict_action_for_ot({**batch, "action": batch["action"] + 10.0})
    assert p1.shape == (4, 5, 3) and p1.requires_grad and policy.model.training  # the step's mode is kept
    torch.testing.assert_close(p1, p2, rtol=0, atol=0)  # the rows' actions never reach the latent
    with torch.no_grad():  # the inference path: ACT's own forward in eval mode on the same observation
        policy.eval()
        ref, _ = policy.model({**{k: v for k, v in batch.items() if k != "action"}, "observation.images": [batch[CAM]]})
        policy.train()
    torch.testing.assert_close(p1.detach(), ref, rtol=1e-5, atol=1e-6)


def test_diffusion_is_refused_naming_the_term_reason():
    pytest.importorskip("diffusers")
    from otplug.lerobot.adapters import DiffusionEncoder
    from otplug.policy_encoder import prediction_problem

    class Cfg:
        type = "diffusion"
        image_features = {CAM: None}

    class P:
        config = Cfg()

    why = prediction_problem(DiffusionEncoder(P()))
    assert why is not None and "iterative denoising loop" in why and "ACT" in why
