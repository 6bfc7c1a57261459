"""A non-finite gradient is attributed (issue 21): a plugin term whose cost is finite and whose gradient is NaN
stops a real ``otplug train`` run before anything is applied or saved, and the one-line error names that term
(found by one backward per part of the loss), not the BC loss or the other terms."""

from __future__ import annotations

import json

import attrs
import pytest

pytest.importorskip("lerobot")
torch = pytest.importorskip("torch")

import otplug  # noqa: E402
from test_train import CAM, _args, pair  # noqa: E402,F401  (pair: the tiny real/sim datasets fixture)

STATE = "observation.state"


class NaNGradient(torch.autograd.Function):
    """The identity forward (finite values), a NaN derivative backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@attrs.frozen(kw_only=True)
class BadConfig:
    src_key: str = STATE
    nan_gradient: bool = True


class BadTerm:
    """Squared distances of the policy's state features; with ``nan_gradient`` its derivative is NaN."""

    def __init__(self, options):
        self.config = options

    def required_keys(self, side):
        return {self.config.src_key}

    def raw_keys(self, side):
        return set()

    def embedding_keys(self):
        return {self.config.src_key}

    def cost(self, src, tgt, ctx):
        x = ctx.embed(src, self.config.src_key, "src")
        y = ctx.embed(tgt, self.config.src_key, "tgt")
        if self.config.nan_gradient:
            x = NaNGradient.apply(x)
        return ctx.sq_dist(x, y)


@pytest.fixture
def bad_term(otplug_registry):
    class Plugin:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="nan-grad", factory=BadTerm, config_cls=BadConfig, summary="test")]

    otplug_registry.register(Plugin(), name="nan-grad-plugin")


def _config(tmp_path, nan_gradient=True):
    cfg = {"reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "cost_normalization": "mean",
           "terms": [{"type": "image", "name": "img", "src_key": CAM, "weight": 1.0},
                     {"type": "nan-grad", "name": "bad", "nan_gradient": nan_gradient, "weight": 1.0},
                     {"type": "action-slice", "name": "act", "weight": 0.5}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("layout", ["single-pass", "separate"])
def test_nan_gradient_of_a_plugin_term_is_named(pair, tmp_path, bad_term, capsys, layout):  # noqa: F811
    from otplug.cli import main

    out = tmp_path / "run"
    rc = main(["train", *_args(pair, out, steps=2, extra=[f"--ot.config={_config(tmp_path)}",
                                                          f"--ot.layout={layout}"])])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    line = next(x for x in err.splitlines() if "otplug: error:" in x)
    assert "training stopped at step 1" in line and "nothing from this step was applied or saved" in line, line
    assert "OT term 'bad' gives a non-finite gradient" in line, line
    finite = line.split("finite: ", 1)[1].split(";")[0]
    assert "the BC loss" in finite and "OT term 'img'" in finite, line
    assert "no gradient: OT term 'act'" in line, line  # action labels are constants
    assert not (out / "checkpoints").exists()


def test_the_same_term_with_a_finite_gradient_trains(pair, tmp_path, bad_term):  # noqa: F811
    """The control: without the NaN derivative the same run trains (the attribution is not what stops it)."""
    from otplug.lerobot.train import main

    out = tmp_path / "ok"
    assert main(_args(pair, out, steps=2, extra=[f"--ot.config={_config(tmp_path, nan_gradient=False)}"])) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped_steps"] == 0 for r in rows if r["step"] > 0)


def test_attribution_names_the_bc_loss_when_the_policy_is_at_fault(pair, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The policy's own forward with a NaN derivative (and OT terms that are fine): the BC loss is named."""
    from lerobot.policies.act.modeling_act import ACTPolicy

    from otplug.cli import main

    forward = ACTPolicy.forward

    def nan_derivative(self, batch, *a, **k):
        loss, out = forward(self, batch, *a, **k)
        return NaNGradient.apply(loss), out

    monkeypatch.setattr(ACTPolicy, "forward", nan_derivative)
    out = tmp_path / "bc"
    assert main(["train", *_args(pair, out, steps=2)]) == 2
    line = next(x for x in capsys.readouterr().err.splitlines() if "otplug: error:" in x)
    assert "the BC loss (the policy's own forward) gives a non-finite gradient" in line, line
    assert "OT term 'img'" in line.split("finite: ", 1)[1], line
