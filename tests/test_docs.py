"""Docs stay in step with the code.

Every hook (read from the hook specs, not counted by hand) has a section in docs/plugins.md headed by its exact
signature, holding one complete example. Each example is taken from the page as written, registered as an
inline plugin and run through the core's real call sites: ``OTLoss`` for terms, reducers, solvers and encoders,
``make_sinks`` for sinks, and the alignment call of ``otplug train``. The import paths the page gives work.
"""

from __future__ import annotations

import csv
import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import otplug
from otplug.plugins import hookspecs
from otplug.plugins.records import RECORD_TYPES

DOCS = Path(__file__).resolve().parents[1] / "docs"
PLUGINS_MD = DOCS / "plugins.md"
EXAMPLE = re.compile(r"<!-- example: (?P<kind>[a-z-]+) -->\n```python\n(?P<code>.*?)\n```", re.S)
KIND_OF_HOOK = {cls.hook: cls.kind for cls in RECORD_TYPES}


def hook_signatures() -> dict[str, str]:
    out = {}
    for name in dir(hookspecs):
        fn = getattr(hookspecs, name)
        if callable(fn) and hasattr(fn, hookspecs.PROJECT + "_spec"):
            ret = inspect.signature(fn).return_annotation
            out[name] = f"{name}() -> {ret}"
    return out


def sections(text: str) -> dict[str, str]:
    """Hook name -> the text of its ``### `<signature>` `` section."""
    out = {}
    for name, sig in hook_signatures().items():
        start = text.index(f"### `{sig}`")
        nxt = re.search(r"^#{2,3} ", text[start + 4:], re.M)
        out[name] = text[start: start + 4 + nxt.start()] if nxt else text[start:]
    return out


def examples() -> dict[str, str]:
    found: dict[str, str] = {}
    for m in EXAMPLE.finditer(PLUGINS_MD.read_text()):
        assert m["kind"] not in found, f"two examples of kind {m['kind']!r}"
        found[m["kind"]] = m["code"]
    return found


@pytest.fixture
def example(otplug_registry, monkeypatch):
    """Load the example of one kind from docs/plugins.md as a module and register it as a plugin."""

    def load(kind: str) -> types.ModuleType:
        name = f"otplug_docs_example_{kind.replace('-', '_')}"
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)  # attrs/cattrs resolve annotations through it
        exec(compile(examples()[kind], f"docs/plugins.md <example: {kind}>", "exec"), module.__dict__)  # noqa: S102
        assert otplug_registry.register(module, name=f"docs-{kind}") is not None, otplug_registry.failures
        return module

    return load


def _batch(pad: bool = False):
    g = torch.Generator().manual_seed(0)
    src = {"observation.state": torch.randn(4, 3, 2, generator=g, dtype=torch.float64)}
    tgt = {"observation.state": torch.randn(5, 3, 2, generator=g, dtype=torch.float64)}
    if pad:
        src["observation.state_is_pad"] = torch.tensor([[False, False, True]] * 2 + [[True, True, True]] * 2)
        tgt["observation.state_is_pad"] = torch.zeros(5, 3, dtype=torch.bool)
    return src, tgt


# -- the page's structure ---------------------------------------------------------------------------------
def test_every_hook_is_documented_with_its_signature():
    text = PLUGINS_MD.read_text()
    sigs = hook_signatures()
    assert set(sigs) == set(KIND_OF_HOOK), "a hook spec without a record type (or the reverse)"
    for name, sig in sigs.items():
        assert f"### `{sig}`" in text, f"docs/plugins.md lacks a section headed `{sig}`"


def test_every_hook_section_has_one_example_of_its_kind():
    text = PLUGINS_MD.read_text()
    for hook, body in sections(text).items():
        kinds = re.findall(r"<!-- example: ([a-z-]+) -->", body)
        kind = KIND_OF_HOOK[hook]
        # the kind's main example first; further ones are named <kind>-<what> (e.g. solver-balanced)
        assert kinds and kinds[0] == kind and all(k.startswith(kind + "-") for k in kinds[1:]), \
            f"section of {hook} has examples {kinds}"
    assert {k.split("-")[0] for k in examples()} == set(KIND_OF_HOOK.values())


def test_documented_import_paths_work():
    text = PLUGINS_MD.read_text()
    table = text[text.index("## 2. Public imports"): text.index("## 3.")]
    lines = re.findall(r"`(from otplug[\w.]* import [^`]+)`", table)
    assert len(lines) >= 10
    for line in lines:
        exec(line, {})  # noqa: S102


def test_example_plugin_in_docs_exists():
    root = DOCS.parent / "plugins" / "otplug-cosine"
    assert (root / "pyproject.toml").read_text().count("[project.entry-points.otplug]") == 1


# -- each example through the core ------------------------------------------------------------------------
def test_term_example(example):
    example("term")
    src, tgt = _batch()
    res = otplug.OTLoss({"terms": [{"type": "l1", "name": "pos", "src_key": "observation.state", "scale": 2.0}],
                         "solver": "pot", "reg": 1.0})(src, tgt)
    x, y = src["observation.state"].reshape(4, -1), tgt["observation.state"].reshape(5, -1)
    expected = 2.0 * (x[:, None] - y[None]).abs().mean(-1)
    torch.testing.assert_close(res.cost, expected)
    assert res.metrics["ot_l1_max/pos"] == pytest.approx(float(expected.max()))
    assert res.metrics["ot_cost/pos"] == pytest.approx(float(expected.mean()))
    with pytest.raises(otplug.ConfigError, match=r"terms\[0\]\.scale"):
        otplug.load_config({"terms": [{"type": "l1", "src_key": "observation.state", "scale": -1.0}]})


def test_reducer_example(example):
    example("reducer")
    src, tgt = _batch(pad=True)
    res = otplug.OTLoss({"terms": [{"type": "label", "name": "s", "src_key": "observation.state",
                                    "time_reduce": "valid-max"}], "solver": "pot", "reg": 1.0})(src, tgt)
    xs = src["observation.state"]
    x = torch.stack([xs[0, :2].amax(0), xs[1, :2].amax(0), xs[2].amax(0), xs[3].amax(0)])  # rows 2-3: all padded
    y = tgt["observation.state"].amax(1)
    torch.testing.assert_close(res.cost, torch.cdist(x, y) ** 2)


@pytest.mark.parametrize("heuristic", [False, True])
def test_solver_example_matches_the_reference(example, heuristic):
    example("solver")
    src, tgt = _batch()
    tgt = {"observation.state": tgt["observation.state"][:4]}  # square, for the diagonal prior
    cfg = {"terms": [{"type": "label", "name": "s", "src_key": "observation.state"}], "reg": 0.5,
           "tau_src": 1.0, "tau_tgt": 2.0, "heuristic": heuristic, "cost_normalization": "mean"}
    ours = otplug.OTLoss({**cfg, "solver": "plain-sinkhorn", "solver_options": {"max_iter": 2000}})(src, tgt)
    ref = otplug.OTLoss({**cfg, "solver": "pot", "solver_options": {"tol": 1e-12, "max_iter": 100000}})(src, tgt)
    torch.testing.assert_close(ours.plan, ref.plan, rtol=1e-6, atol=1e-12)
    assert ours.metrics["ot_solver/converged"] == 1.0
    assert ours.metrics["ot_solver/mass"] == pytest.approx(float(ours.plan.sum()))
    with pytest.raises(otplug.ConfigError, match="solver_options.max_iter"):
        otplug.load_config({**cfg, "solver": "plain-sinkhorn", "solver_options": {"max_iter": 0}})


def test_solver_example_batched_with_marginals(example, otplug_registry):
    module = example("solver")
    pot = otplug_registry.get("solver", "pot")
    g = torch.Generator().manual_seed(1)
    M = torch.rand(2, 3, 4, generator=g, dtype=torch.float64)
    a, b = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64)
    ours = module.PlainSinkhorn(module.PlainSinkhornOptions()).solve(M, reg=0.3, reg_m=(1.0, 1.0), a=a, b=b)
    ref = pot.load()(pot.load_config_cls()(tol=1e-12, max_iter=100000)).solve(M, reg=0.3, reg_m=(1.0, 1.0), a=a, b=b)
    assert ours.plan.shape == M.shape and ours.converged
    torch.testing.assert_close(ours.plan, ref.plan, rtol=1e-6, atol=1e-12)


def test_encoder_example(example):
    example("encoder")

    class MyMLP(torch.nn.Module):
        class config:  # noqa: N801 -- a lerobot policy's config, reduced to its type
            type = "my-mlp"

        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(2, 3, dtype=torch.float64)

    policy = MyMLP()
    res = otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "observation.state"}],
                         "solver": "pot", "reg": 1.0})(*_batch(), encoder=policy)
    res.loss.backward()
    assert policy.backbone.weight.grad is not None and bool(policy.backbone.weight.grad.abs().sum() > 0)
    with pytest.raises(otplug.OtplugError, match="my-mlp encodes 'observation.state' only"):
        otplug.OTLoss({"terms": [{"type": "embedding", "name": "e", "src_key": "action"}],
                       "solver": "pot"})({"action": torch.zeros(2, 2)}, {"action": torch.zeros(2, 2)}, encoder=policy)


def test_sink_example(example, tmp_path):
    from otplug.sinks import make_sinks

    example("sink")
    plan = torch.full((3, 3), 1 / 9)
    with make_sinks(tmp_path, ["csv", "plan-npy"], {"csv": {"filename": "m.csv"}, "plan-npy": {"every": 2}}) as sinks:
        for step in range(1, 5):  # as the training loop calls them
            sinks.log(step, {"bc_loss": 1.0 / step, "ot_loss": 0.5})
            if sinks.wants_plan(step):
                sinks.log_plan(step, plan.float().cpu().numpy(), {"step": step})
    assert not sinks.failures
    with open(tmp_path / "m.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and float(rows[1]["bc_loss"]) == 0.5
    assert sorted(p.name for p in (tmp_path / "plans").iterdir()) == ["plan_000002.npy", "plan_000004.npy"]
    np.testing.assert_allclose(np.load(tmp_path / "plans" / "plan_000002.npy"), plan.numpy())
    assert (tmp_path / "metrics.jsonl").exists()  # always on
    with pytest.raises(otplug.OtplugError, match="'every' must be >= 1"):
        make_sinks(tmp_path, ["plan-npy"], {"plan-npy": {"every": 0}})


def test_alignment_example(example, otplug_registry):
    example("alignment")
    # the call of `otplug train` (separate layout): factory() once, policy(ot_batch, bc_batch, device) per side
    policy = otplug_registry.get("alignment", "same-shapes", field="--ot.alignment").load()()
    ot_batch = {"observation.state": torch.zeros(3, 2, dtype=torch.float64), "task": ["a", "b", "c"],
                "extra": torch.ones(3)}
    reference = {"observation.state": torch.zeros(8, 2, dtype=torch.float32)}
    out = policy(ot_batch, reference, torch.device("cpu"))
    assert out["observation.state"].dtype == torch.float32 and out["task"] == ["a", "b", "c"]
    assert ot_batch["observation.state"].dtype == torch.float64  # the input is not modified
    with pytest.raises(otplug.BatchError, match="'observation.state' has shape"):
        policy({"observation.state": torch.zeros(3, 4)}, reference, torch.device("cpu"))


def test_public_exports_the_docs_use():
    import otplug.errors
    import otplug.loss

    assert otplug.OTSolverWarning is otplug.loss.OTSolverWarning
    assert otplug.OTCollapseWarning is otplug.loss.OTCollapseWarning
    assert otplug.DuplicateComponentError is otplug.errors.DuplicateComponentError
    assert otplug.PluginLoadError is otplug.errors.PluginLoadError
    assert otplug.EMAEncoder.__module__ == "otplug.ema" and otplug.PlanCheck.__module__ == "otplug.solvers.problems"
    used = {"OTSolverWarning", "EMAEncoder", "DuplicateComponentError", "PluginLoadError", "PlanCheck"}
    assert used <= set(otplug.__all__)


# -- the balanced solver example: declares problem="balanced", trained on in tests/test_train.py ---------------------
BALANCED = {"terms": [{"type": "label", "name": "s", "src_key": "observation.state"}], "reg": 0.2,
            "marginals": "exact", "cost_normalization": "mean"}


def test_balanced_solver_example_matches_pot_sinkhorn(example, recwarn):
    example("solver-balanced")
    src, tgt = _batch()
    ours = otplug.OTLoss({**BALANCED, "solver": "balanced-log"})(src, tgt)
    ref = otplug.OTLoss({**BALANCED, "solver": "pot-balanced", "solver_options": {"tol": 1e-13, "max_iter": 100000}})(
        src, tgt)
    torch.testing.assert_close(ours.plan, ref.plan, rtol=0, atol=1e-9)
    assert ours.metrics["ot_solver/converged"] == 1.0 and ours.metrics["ot_collapsed"] == 0.0
    # the core checked the marginals (not the unbalanced mass bound) and logged them
    assert ours.metrics["ot_marginal_error/src"] < ours.metrics["ot_marginal_tol"] == 1e-6
    assert ours.metrics["ot_marginal_error/tgt"] < 1e-6 and "ot_mass_excess" not in ours.metrics
    assert ours.metrics["ot_pi_sum"] == pytest.approx(1.0)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    heur = otplug.OTLoss({**BALANCED, "solver": "balanced-log", "heuristic": True})(src, {"observation.state":
                                                                                     tgt["observation.state"][:4]})
    torch.testing.assert_close(heur.plan, torch.eye(4, dtype=torch.float64) / 4)


def test_balanced_solver_example_needs_exact_marginals(example):
    example("solver-balanced")
    cfg = {k: v for k, v in BALANCED.items() if k != "marginals"}
    # no tau given: the marginals follow the solver's declared problem (issue #28)
    assert otplug.load_config({**cfg, "solver": "balanced-log"}).marginals == "exact"
    with pytest.raises(otplug.ConfigError, match=r"tau_tgt: is 0.5 \(a KL-relaxed marginal\), but solver 'balanced-log' "
                                                 r".*solves balanced OT"):
        otplug.load_config({**cfg, "solver": "balanced-log", "tau_tgt": 0.5})
    with pytest.raises(otplug.ConfigError, match=r"tau_src: is 0.5, but marginals = 'exact'"):
        otplug.load_config({**BALANCED, "solver": "balanced-log", "tau_src": 0.5})
    assert otplug.load_config({**cfg, "solver": "balanced-log", "tau_src": float("inf"),
                               "tau_tgt": float("inf")}).marginals == "exact"


def test_term_contract_example(example):
    example("term-contract")

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 3, dtype=torch.float64)

        def encode_feature_for_ot(self, key, x):
            return self.lin(x.reshape(x.shape[0], -1))

    policy = Policy()
    cfg = {"terms": [{"type": "spread", "name": "sp", "src_key": "observation.state", "floor": 100.0}],
           "solver": "pot", "reg": 1.0, "tau_src": 1.0, "tau_tgt": 1.0, "debias": True}
    loss = otplug.OTLoss(cfg)
    assert loss.needs_ema_encoder
    src, tgt = _batch()
    with pytest.raises(otplug.OtplugError, match="no EMA encoder was given"):
        loss(src, tgt, encoder=policy)
    ema = otplug.EMAEncoder(policy)
    res = loss(src, tgt, encoder=policy, ema_encoder=ema)
    # within_cost: the debiased loss with both within-domain plans
    assert set(res.within_plans) == {"src", "tgt"} and res.within_costs["src"].shape == (4, 4)
    assert res.metrics["ot_loss"] == pytest.approx(res.metrics["ot_debias/xy"] - 0.5 * (
        res.metrics["ot_debias/xx"] + res.metrics["ot_debias/yy"]))
    # penalties: added to the loss as they are, reported as ot_reg_loss
    assert res.regularizer is not None and res.metrics["ot_reg_loss"] > 0
    assert float(res.loss.detach()) == pytest.approx(res.metrics["ot_loss"] + res.metrics["ot_reg_loss"])
    res.loss.backward()
    assert policy.lin.weight.grad is not None and bool(policy.lin.weight.grad.abs().sum() > 0)
    assert all(p.grad is None for p in ema.module.parameters())  # the EMA side is constant
    # state_dict: collected per term name, given back on load
    assert loss.state_dict()["sp"] == {"calls": 1}
    fresh = otplug.OTLoss(cfg)
    fresh.load_state_dict(loss.state_dict())
    assert fresh.terms[0].impl.calls == 1
