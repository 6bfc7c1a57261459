"""Each hook's contract exactly as docs/plugins.md states it, exercised through the core's real call sites
(a plugin written from the docs alone must work)."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

import otplug
from otplug.solvers.base import SolveResult


def _batch():
    g = torch.Generator().manual_seed(0)
    return ({"observation.state": torch.randn(4, 3, 2, generator=g, dtype=torch.float64)},
            {"observation.state": torch.randn(4, 3, 2, generator=g, dtype=torch.float64)})


def test_time_reducer_plugin(otplug_registry):
    def max_over_time(x, mask):
        return x.amax(dim=1).reshape(x.shape[0], -1)

    class P:
        @otplug.hookimpl
        def otplug_time_reducers(self):
            return [otplug.TimeReducer(name="max", factory=max_over_time, summary="max over steps")]

    otplug_registry.register(P(), name="max-reducer")
    src, tgt = _batch()
    res = otplug.OTLoss({"terms": [{"type": "label", "name": "s", "src_key": "observation.state",
                                    "time_reduce": "max"}], "solver": "pot", "reg": 1.0})(src, tgt)
    x, y = src["observation.state"].amax(1), tgt["observation.state"].amax(1)
    torch.testing.assert_close(res.cost, torch.cdist(x, y) ** 2)


def test_solver_plugin_with_options(otplug_registry):
    @attrs.frozen(kw_only=True)
    class UniformOptions:
        mass: float = 1.0

    class UniformSolver:
        def __init__(self, options):
            self.options = options

        def solve(self, M, *, reg, reg_m, heuristic=False, a=None, b=None):
            n, m = M.shape[-2:]
            plan = torch.full_like(M, self.options.mass / (n * m))
            return SolveResult(plan=plan, iterations=0, converged=True, error=0.0, info={"mass": self.options.mass})

    class P:
        @otplug.hookimpl
        def otplug_solvers(self):
            return [otplug.Solver(name="uniform", factory=UniformSolver, config_cls=UniformOptions,
                                  summary="independent coupling")]

    otplug_registry.register(P(), name="uniform-solver")
    # a cost of the order of reg: the independent coupling of mass 0.5 is within the problem's mass bound
    cfg = {"terms": [{"type": "label", "name": "s", "src_key": "observation.state"}], "solver": "uniform",
           "solver_options": {"mass": 0.5}, "reg": 1.0, "cost_normalization": "mean"}
    res = otplug.OTLoss(cfg)(*_batch())
    assert res.metrics["ot_pi_sum"] == pytest.approx(0.5)
    assert res.metrics["ot_solver/mass"] == 0.5
    with pytest.raises(otplug.ConfigError, match="solver_options.mas"):
        otplug.load_config({**cfg, "solver_options": {"mas": 0.5}})


def test_metric_sink_plugin(otplug_registry, tmp_path):
    from otplug.sinks import make_sinks

    class ListSink:
        def __init__(self, run_dir, **options):
            self.path = run_dir / "mine.json"
            self.rows = []
            self.prefix = options.get("prefix", "")

        def log(self, step, metrics):
            self.rows.append({"step": step, **{self.prefix + k: v for k, v in metrics.items()}})

        def close(self):
            self.path.write_text(json.dumps(self.rows))

    class P:
        @otplug.hookimpl
        def otplug_metric_sinks(self):
            return [otplug.MetricSink(name="mine", factory=ListSink, summary="test sink")]

    otplug_registry.register(P(), name="mine-sink")
    group = make_sinks(tmp_path, ["mine"], {"mine": {"prefix": "x/"}})
    group.log(1, {"ot_loss": 0.5})
    group.close()
    assert json.loads((tmp_path / "mine.json").read_text()) == [{"step": 1, "x/ot_loss": 0.5}]
    assert (tmp_path / "metrics.jsonl").exists()  # jsonl is always on


def test_policy_encoder_plugin(otplug_registry):
    class MyPolicy(torch.nn.Module):
        class config:
            type = "my-policy"

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 3, dtype=torch.float64)

    class MyAdapter:
        def __init__(self, policy):
            self.policy = policy

        def encode_feature_for_ot(self, key, x):
            return self.policy.proj(x)  # keeps the time axis of (B, S, D) inputs

    class P:
        @otplug.hookimpl
        def otplug_policy_encoders(self):
            return [otplug.PolicyEncoder(name="my-policy", factory=MyAdapter, summary="test adapter")]

    otplug_registry.register(P(), name="my-encoders")
    policy = MyPolicy()
    res = otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "observation.state"}],
                         "solver": "pot", "reg": 1.0})(*_batch(), encoder=policy)
    res.loss.backward()
    assert policy.proj.weight.grad is not None


def test_alignment_policy_plugin(otplug_registry):
    class DropExtras:
        def __call__(self, ot_batch, reference, device):
            return {k: v.to(device) for k, v in ot_batch.items() if k in reference}

    class P:
        @otplug.hookimpl
        def otplug_alignment_policies(self):
            return [otplug.AlignmentPolicy(name="drop-extras", factory=DropExtras, summary="test")]

    otplug_registry.register(P(), name="align-plugin")
    policy = otplug_registry.get("alignment", "drop-extras").load()()
    out = policy({"a": torch.zeros(2), "b": torch.ones(2)}, {"a": torch.zeros(2)}, torch.device("cpu"))
    assert set(out) == {"a"}
