"""The core enforces the term and solver contracts and names the component in every failure (issue 10):
costs finite and >= 0 with the right shape and dtype, weights that do not underflow, plans of the cost's
shape, >= 0 and within the problem's mass bound, and exceptions from plugin code attributed."""

from __future__ import annotations

import math
import warnings

import attrs
import pytest
import torch

import otplug
from otplug.errors import BatchError, OtplugError, PluginError
from otplug.loss import OTSolverWarning
from otplug.solvers.base import SolveResult, log_mass_bound, mass_bound


def batches(n: int = 3, m: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return ({"emb": torch.randn(n, 2, generator=g, dtype=dtype)},
            {"emb": torch.randn(m, 2, generator=g, dtype=dtype)})


@attrs.frozen(kw_only=True)
class FnConfig:
    src_key: str = "emb"


def register_term(registry, fn, *, factory=None, name="fn", plugin="my-plugin"):
    """A term plugin whose cost() is ``fn(n, m, src, tgt)``."""

    class FnTerm:
        def __init__(self, options):
            self.config = options

        def cost(self, src, tgt, ctx):
            return fn(src["emb"].shape[0], tgt["emb"].shape[0], src, tgt)

    class P:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name=name, factory=factory or FnTerm, config_cls=FnConfig, summary="test")]

    registry.register(P(), name=plugin)


def loss_for(term_type="fn", weight=1.0, **cfg):
    return otplug.OTLoss({"terms": [{"type": term_type, "name": "t", "weight": weight}], "solver": "sinkhorn",
                          "reg": 0.1, **cfg})


# ------------------------------------------------------------------ costs
def test_negative_costs_are_an_error_naming_term_and_plugin(otplug_registry):
    register_term(otplug_registry, lambda n, m, s, t: torch.full((n, m), -1.0, dtype=torch.float64))
    with pytest.raises(PluginError) as info:
        loss_for()(*batches())
    msg = str(info.value)
    assert "term 't' (type 'fn', from my-plugin)" in msg and "negative costs" in msg and ">= 0" in msg
    assert "\n" not in msg and info.value.kind == "term" and info.value.provider == "my-plugin"


def test_rounding_sized_negatives_are_clamped(otplug_registry):
    # 1 - cos of identical unit vectors is a few ulp below 0: not an error, and M >= 0 afterwards
    register_term(otplug_registry, lambda n, m, s, t: torch.full((n, m), -1e-16, dtype=torch.float64)
                  + torch.eye(n, m, dtype=torch.float64))
    res = loss_for()(*batches())
    assert float(res.cost.min()) == 0.0


@pytest.mark.parametrize(
    ("fn", "fragment"),
    [
        (lambda n, m, s, t: torch.ones(n, dtype=torch.float64), "shape (3, 3)"),
        (lambda n, m, s, t: torch.ones(1, m, dtype=torch.float64), "never broadcast), got (1, 3)"),
        (lambda n, m, s, t: torch.ones(m, n + 1, dtype=torch.float64), "got (3, 4)"),
        (lambda n, m, s, t: torch.ones(n, m, dtype=torch.int64), "int64 cost"),
        (lambda n, m, s, t: [[0.0] * m] * n, "got list"),
    ],
)
def test_cost_shape_and_dtype_are_checked(otplug_registry, fn, fragment):
    register_term(otplug_registry, fn)
    with pytest.raises(PluginError, match="term 't' .*from my-plugin") as info:
        loss_for()(*batches())
    assert fragment in str(info.value)


def test_non_square_shapes_are_checked_too(otplug_registry):
    register_term(otplug_registry, lambda n, m, s, t: torch.ones(m, n, dtype=torch.float64))
    with pytest.raises(PluginError, match=r"shape \(4, 3\).*got \(3, 4\)"):
        loss_for()(*batches(4, 3))


def test_non_finite_costs_name_the_term(otplug_registry):
    register_term(otplug_registry, lambda n, m, s, t: torch.full((n, m), math.inf, dtype=torch.float64))
    with pytest.raises(BatchError, match=r"term 't' \(type 'fn', from my-plugin\): term 't' produced 9 non-finite"):
        loss_for()(*batches())


@pytest.mark.parametrize("weight", [1e-50, 1e-40])
def test_a_weight_that_underflows_the_cost_is_an_error(weight):
    cfg = {"terms": [{"type": "label", "name": "lab", "src_key": "emb", "weight": weight}]}
    ot = otplug.OTLoss(cfg)
    with pytest.raises(OtplugError, match=r"term 'lab' weight \(term_weight\) 1e-[45]0 underflows its float32"):
        ot(*batches(dtype=torch.float32))
    ot(*batches(dtype=torch.float64))  # float64 holds these costs


def test_a_weight_that_overflows_the_cost_is_an_error():
    ot = otplug.OTLoss({"terms": [{"type": "label", "name": "lab", "src_key": "emb", "weight": 1e300}]})
    with pytest.raises(OtplugError, match=r"term 'lab' weight \(term_weight\) 1e\+300 overflows its float32"):
        ot(*batches(dtype=torch.float32))


def test_an_inner_weight_that_underflows_is_an_error():
    cfg = {"terms": [{"type": "label", "name": "lab", "src_key": "emb", "weight_label": 1e-50}]}
    with pytest.raises(OtplugError, match="inner weight"):
        otplug.OTLoss(cfg)(*batches(dtype=torch.float32))


def test_all_zero_costs_are_fine_when_the_data_says_so():
    x = torch.ones(3, 2)
    res = otplug.OTLoss({"terms": [{"type": "label", "name": "lab", "src_key": "emb"}]})({"emb": x}, {"emb": x})
    assert float(res.cost.abs().max()) == 0.0 and res.metrics["ot_pi_sum"] == pytest.approx(1.0, rel=1e-4)


# ------------------------------------------------------------------ attribution
def test_exceptions_in_cost_are_attributed(otplug_registry):
    def boom(n, m, s, t):
        raise ZeroDivisionError("division by zero\nsecond line")

    register_term(otplug_registry, boom, plugin="boom-plugin")
    with pytest.raises(PluginError) as info:
        loss_for()(*batches())
    msg = str(info.value)
    assert msg == ("term 't' (type 'fn', from boom-plugin): cost() raised ZeroDivisionError: division by zero "
                   "second line")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_exceptions_in_the_factory_are_attributed(otplug_registry):
    def factory(options):
        raise ValueError("bad options")

    register_term(otplug_registry, None, factory=factory, plugin="f-plugin")
    with pytest.raises(PluginError, match=r"^term 't' \(type 'fn', from f-plugin\): the factory raised ValueError: "
                                          "bad options$"):
        loss_for()


def test_otplug_errors_from_plugins_keep_their_class_with_attribution(otplug_registry):
    def missing(n, m, s, t):
        raise BatchError("src batch has no key 'x'")

    register_term(otplug_registry, missing)
    with pytest.raises(BatchError, match=r"^term 't' \(type 'fn', from my-plugin\): src batch has no key 'x'$"):
        loss_for()(*batches())


def test_builtin_otplug_errors_are_unchanged():
    ot = otplug.OTLoss({"terms": [{"type": "label", "name": "lab", "src_key": "nope"}]})
    with pytest.raises(BatchError, match=r"^src batch has no key 'nope'"):
        ot(*batches())


def test_required_keys_is_attributed_and_checked(otplug_registry):
    class KeysTerm:
        def __init__(self, options):
            pass

        def required_keys(self, side):
            return None

        def cost(self, src, tgt, ctx):
            return torch.zeros(3, 3)

    register_term(otplug_registry, None, factory=KeysTerm, plugin="k-plugin")
    ot = loss_for()
    with pytest.raises(PluginError, match=r"term 't' .*k-plugin\): required_keys\('src'\) must return a set of batch "
                                          "keys"):
        ot.required_keys("src")


def test_reducer_failures_are_attributed(otplug_registry):
    def bad(x, mask):
        return x  # keeps the time axis: (B, S, D) is not (B, F)

    class P:
        @otplug.hookimpl
        def otplug_time_reducers(self):
            return [otplug.TimeReducer(name="bad", factory=bad, summary="broken")]

    otplug_registry.register(P(), name="bad-reducer")
    ot = otplug.OTLoss({"terms": [{"type": "label", "name": "s", "src_key": "x", "time_reduce": "bad"}]})
    x = torch.randn(2, 3, 4)
    with pytest.raises(PluginError, match=r"reducer 'bad' \(from bad-reducer\): the reducer must return a \(B, F\)"):
        ot({"x": x}, {"x": x})


# ------------------------------------------------------------------ solvers
def register_solver(registry, solve, plugin="s-plugin"):
    class S:
        def __init__(self, options):
            pass

        def solve(self, M, *, reg, reg_m, heuristic=False, a=None, b=None):
            return solve(M)

    class P:
        @otplug.hookimpl
        def otplug_solvers(self):
            return [otplug.Solver(name="mine", factory=S, summary="test")]

    registry.register(P(), name=plugin)


def solved(M_plan, **info):
    return SolveResult(plan=M_plan, iterations=1, converged=True, error=0.0, info=info)


def label_loss(**cfg):
    return otplug.OTLoss({"terms": [{"type": "label", "name": "lab", "src_key": "emb"}], "solver": "mine", **cfg})


@pytest.mark.parametrize(
    ("solve", "fragment"),
    [
        (lambda M: solved(torch.full((1, 3), 0.1, dtype=M.dtype)), "plan of shape (1, 3) for a cost of shape (3, 3)"),
        (lambda M: solved(torch.ones(3, 3, dtype=torch.int32)), "int32 plan"),
        (lambda M: solved(-torch.ones_like(M)), "negative entries"),
        (lambda M: M, "must return a SolveResult"),
    ],
)
def test_solver_results_are_checked(otplug_registry, solve, fragment):
    register_solver(otplug_registry, solve)
    with pytest.raises(PluginError, match=r"solver 'mine' \(from s-plugin\): solve\(\)") as info:
        label_loss()(*batches())
    assert fragment in str(info.value)


def test_solver_exceptions_are_attributed(otplug_registry):
    def solve(M):
        raise RuntimeError("singular")

    register_solver(otplug_registry, solve)
    with pytest.raises(PluginError, match=r"^solver 'mine' \(from s-plugin\): solve\(\) raised RuntimeError: "
                                          "singular$"):
        label_loss()(*batches())


def test_plan_above_the_mass_bound_is_flagged(otplug_registry):
    # a "converged" plan carrying 9x the mass the problem allows: never reported as success
    register_solver(otplug_registry, lambda M: solved(torch.full_like(M, 1.0)))
    with pytest.warns(OTSolverWarning, match="exceeds .* the plan is wrong although the solver reported convergence"):
        res = label_loss()(*batches())
    assert res.metrics["ot_solver/converged"] == 0.0
    assert res.metrics["ot_mass_excess"] > 9.0 and res.metrics["ot_mass_bound"] <= 1.0
    with pytest.raises(OtplugError, match="exceeds"):
        label_loss(on_collapse="raise")(*batches())
    with pytest.warns(OTSolverWarning):
        res = label_loss(on_collapse="uniform")(*batches())
    assert res.metrics["ot_fallback"] == 1.0


def test_mass_bound_metrics_on_the_worked_example():
    from test_loss import SEED_EXAMPLE, example_batches

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = otplug.OTLoss(SEED_EXAMPLE)(*example_batches())
    # bound exp(-min M / (reg + tau_src + tau_tgt)) = exp(-0.01 / 0.2)
    assert res.metrics["ot_mass_bound"] == pytest.approx(math.exp(-0.05))
    assert res.metrics["ot_pi_sum"] < res.metrics["ot_mass_bound"] and res.metrics["ot_solver/converged"] == 1.0


def test_mass_bound_formula():
    # tight for a constant cost: the optimal plan of M = c is the scaled product measure
    from otplug.solvers.sinkhorn import LogSinkhornSolver

    for c, reg, tau in [(0.0, 0.1, (0.05, 0.05)), (0.7, 0.2, (0.5, 2.0)), (3.0, 1.0, (0.1, 10.0))]:
        M = torch.full((4, 5), c, dtype=torch.float64)
        r = LogSinkhornSolver().solve(M, reg=reg, reg_m=tau)
        assert float(r.plan.sum()) == pytest.approx(float(mass_bound(c, reg, tau)), rel=1e-6)
    # non-uniform masses, and a hard marginal
    assert float(mass_bound(0.0, 1.0, (1.0, 2.0), 2.0, 0.5)) == pytest.approx(
        math.exp((math.log(1.0) + math.log(2.0) + 2 * math.log(0.5)) / 4))
    assert float(mass_bound(5.0, 1.0, (math.inf, 1.0), 0.3, 0.9)) == pytest.approx(0.3)
    assert float(log_mass_bound(1e6, 1e-3, (1e-3, 1e-3))) == pytest.approx(-1e6 / 3e-3)  # no underflow


def test_solver_info_cannot_override_the_core_metrics(otplug_registry):
    register_solver(otplug_registry, lambda M: solved(torch.full_like(M, 1.0), converged=1.0, iterations=-1.0))
    with pytest.warns(OTSolverWarning):
        res = label_loss()(*batches())
    assert res.metrics["ot_solver/converged"] == 0.0 and res.metrics["ot_solver/iterations"] == 1.0
