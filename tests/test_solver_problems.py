"""Solvers declare the OT problem they solve; configs and the core follow the declaration.

Balanced OT (``sinkhorn-balanced`` against POT's ``ot.sinkhorn``), the check of each declared problem through
``OTLoss`` (inline plugin solvers), config errors naming the field and the solver, one outlier cost entry on every
built-in solver (issue 21), and ``otplug list solvers``.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import otplug
from otplug import PlanCheck, SolveResult
from otplug.errors import OtplugError, PluginError
from otplug.solvers.configs import SinkhornConfig
from otplug.solvers.problems import check_plan
from otplug.solvers.sinkhorn import BalancedSinkhornSolver, LogSinkhornSolver

ot = pytest.importorskip("ot")

TERMS = [{"type": "label", "name": "s", "src_key": "x"}]
BUILTINS = {"sinkhorn": "relaxed", "pot": "relaxed", "pot-torch": "relaxed", "sinkhorn-balanced": "exact",
            "pot-balanced": "exact"}


def _cfg(solver: str, marginals: str = "relaxed", **kw):
    cfg = {"terms": TERMS, "solver": solver, "reg": 0.05, **kw}
    if marginals == "relaxed":
        cfg.setdefault("tau_src", 1.0)
        cfg.setdefault("tau_tgt", 1.0)
    else:
        cfg["marginals"] = marginals
    return cfg


def _cost(n=6, m=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, m, generator=g, dtype=dtype)


def _register(registry, solve, problem=None, check=None, name="mine"):
    class Plugin:
        @otplug.hookimpl
        def otplug_solvers(self):
            return [otplug.Solver(name=name, factory=lambda options: _Solver(solve), problem=problem, check=check,
                                  summary="test")]

    registry.register(Plugin(), name=f"{name}-plugin")


class _Solver:
    def __init__(self, solve):
        self._solve = solve

    def solve(self, M, *, reg, reg_m, heuristic=False, a=None, b=None):
        self.reg_m = reg_m
        return SolveResult(plan=self._solve(M), iterations=1, converged=True, error=0.0)


# -- balanced OT: parity with POT --------------------------------------------------------------------------------
@pytest.mark.parametrize("reg", [1.0, 0.1, 0.02])
@pytest.mark.parametrize("shape", [(5, 7), (8, 8)])
def test_sinkhorn_balanced_matches_pot_sinkhorn_in_float64(reg, shape):
    M = _cost(*shape, seed=3)
    a, b = np.full(shape[0], 1 / shape[0]), np.full(shape[1], 1 / shape[1])
    r = BalancedSinkhornSolver(SinkhornConfig(tol=1e-13, max_iter=100000)).solve(M, reg=reg)
    for method in ("sinkhorn", "sinkhorn_log"):
        ref = ot.sinkhorn(a, b, M.numpy(), reg, method=method, stopThr=1e-15, numItermax=200000)
        assert np.abs(r.plan.numpy() - ref).max() <= 1e-9, method
    assert r.converged and r.plan.dtype == torch.float64
    # pot-balanced is exactly POT's call
    p = otplug.get_registry().get("solver", "pot-balanced")
    rp = p.load()(p.load_config_cls()(tol=1e-13, max_iter=100000)).solve(M, reg=reg)
    assert np.abs(rp.plan.numpy() - ot.sinkhorn(a, b, M.numpy(), reg, stopThr=1e-13, numItermax=100000)).max() == 0


def test_balanced_solvers_refuse_relaxed_marginals_when_called_directly():
    with pytest.raises(OtplugError, match=r"sinkhorn-balanced solves balanced OT .*reg_m must be \(inf, inf\)"):
        BalancedSinkhornSolver().solve(_cost(), reg=0.1, reg_m=(1.0, 1.0))


def test_balanced_loss_checks_and_logs_marginals_without_warning(recwarn):
    M = _cost()
    for solver in ("sinkhorn-balanced", "pot-balanced"):
        res = otplug.OTLoss(_cfg(solver, "exact")).from_cost(M)
        assert res.metrics["ot_solver/converged"] == 1.0 and res.metrics["ot_pi_sum"] == pytest.approx(1.0)
        assert res.metrics["ot_marginal_error/src"] <= res.metrics["ot_marginal_tol"] == 1e-6
        assert res.metrics["ot_marginal_error/tgt"] <= 1e-6
        assert "ot_mass_excess" not in res.metrics and "ot_solver/mass_excess" not in res.metrics
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_balanced_debias_and_heuristic():
    M = _cost(6, 6)
    res = otplug.OTLoss(_cfg("sinkhorn-balanced", "exact", heuristic=True)).from_cost(M)
    torch.testing.assert_close(res.plan, torch.eye(6, dtype=torch.float64) / 6)
    src = {"x": torch.randn(5, 3, dtype=torch.float64)}
    tgt = {"x": torch.randn(4, 3, dtype=torch.float64) + 1}
    res = otplug.OTLoss(_cfg("sinkhorn-balanced", "exact", debias=True))(src, tgt)
    assert res.metrics["ot_debias/converged_xx"] == 1.0 and res.within_plans["src"].sum() == pytest.approx(1.0)


# -- the core checks what is declared ----------------------------------------------------------------------------
def test_unbalanced_plugin_overshooting_the_bound_is_caught(otplug_registry):
    _register(otplug_registry, lambda M: torch.full_like(M, 1.0), problem="kl-unbalanced")
    with pytest.warns(otplug.OTSolverWarning, match=r"'mine' \(kl-unbalanced\).*exceeds .*the plan is wrong"):
        res = otplug.OTLoss(_cfg("mine")).from_cost(_cost())
    assert res.metrics["ot_solver/converged"] == 0.0 and res.metrics["ot_mass_excess"] > 10


def test_balanced_plugin_with_wrong_marginals_is_caught_and_a_right_one_is_not(otplug_registry):
    M = _cost()
    n, m = M.shape
    _register(otplug_registry, lambda M: torch.full_like(M, 1.0 / (n * m)), problem="balanced", name="indep")
    _register(otplug_registry, lambda M: torch.full_like(M, 0.5 / (n * m)), problem="balanced", name="half")
    loss = otplug.OTLoss(_cfg("indep", "exact"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = loss.from_cost(M)  # a b^T has exact marginals: accepted, though above the unbalanced bound
    assert res.metrics["ot_solver/converged"] == 1.0 and loss.solver.reg_m == (math.inf, math.inf)
    with pytest.warns(otplug.OTSolverWarning, match=r"'half' \(balanced\).*src marginal off by 0.5"):
        res = otplug.OTLoss(_cfg("half", "exact")).from_cost(M)
    assert res.metrics["ot_solver/converged"] == 0.0 and res.metrics["ot_marginal_error/tgt"] == pytest.approx(0.5)
    with pytest.raises(OtplugError, match="does not meet the exact marginal"):
        otplug.OTLoss(_cfg("half", "exact", on_collapse="raise")).from_cost(M)


def test_semi_relaxed_plugin_checks_its_exact_side(otplug_registry):
    M = _cost()

    class Semi:
        @otplug.hookimpl
        def otplug_solvers(self):
            return [otplug.Solver(name="semi", factory=lambda o: LogSinkhornSolver(), problem="semi-relaxed",
                                  summary="test")]

    otplug_registry.register(Semi(), name="semi-plugin")
    res = otplug.OTLoss(_cfg("semi", "exact-src", tau_tgt=0.5)).from_cost(M)
    assert res.metrics["ot_marginal_error/src"] < 1e-6 < res.metrics["ot_marginal_error/tgt"]
    assert res.metrics["ot_solver/converged"] == 1.0
    with pytest.raises(otplug.ConfigError, match=r"marginals: solver 'semi' .*solves semi-relaxed OT"):
        otplug.load_config(_cfg("semi", "exact"))


def test_custom_problem_uses_the_solvers_own_check(otplug_registry):
    seen = {}

    def check(plan, M, *, reg, reg_m, heuristic):
        seen["reg_m"] = reg_m
        largest = float(plan.max())
        return PlanCheck(ok=largest < 0.1, message="an entry above 0.1", metrics={"largest": largest})

    _register(otplug_registry, lambda M: torch.full_like(M, 1.0 / M.numel()), problem="custom", check=check)
    res = otplug.OTLoss(_cfg("mine", "exact")).from_cost(_cost())  # any marginals: the check decides
    assert seen["reg_m"] == (math.inf, math.inf) and res.metrics["ot_check/largest"] == pytest.approx(1 / 42)
    assert res.metrics["ot_solver/converged"] == 1.0 and "ot_marginal_error/src" in res.metrics
    _register(otplug_registry, lambda M: torch.full_like(M, 0.5), problem="custom", check=check, name="heavy")
    with pytest.warns(otplug.OTSolverWarning, match="an entry above 0.1"):
        otplug.OTLoss(_cfg("heavy")).from_cost(_cost())
    _register(otplug_registry, lambda M: torch.full_like(M, 0.01), problem="custom", check=lambda *a, **k: True,
              name="sloppy")
    with pytest.raises(PluginError, match=r"solver 'sloppy' .*check\(\) must return an otplug.PlanCheck"):
        otplug.OTLoss(_cfg("sloppy")).from_cost(_cost())


def test_undeclared_solver_keeps_todays_behaviour(otplug_registry):
    _register(otplug_registry, lambda M: torch.full_like(M, 1.0))  # problem=None
    with pytest.raises(otplug.ConfigError, match=r"marginals: solver 'mine' .*KL-unbalanced"):
        otplug.load_config(_cfg("mine", "exact"))
    with pytest.warns(otplug.OTSolverWarning, match=r"\(kl-unbalanced\).*exceeds"):
        otplug.OTLoss(_cfg("mine")).from_cost(_cost())


def test_record_validation():
    with pytest.raises(ValueError, match="Solver.problem must be one of"):
        otplug.Solver(name="x", factory=object, problem="unbalanced")
    with pytest.raises(ValueError, match="needs check="):
        otplug.Solver(name="x", factory=object, problem="custom")
    with pytest.raises(ValueError, match="only used with problem='custom'"):
        otplug.Solver(name="x", factory=object, problem="balanced", check=lambda *a, **k: None)


def test_an_otconfig_built_in_python_is_checked_by_otloss():
    cfg = otplug.load_config(_cfg("sinkhorn"))
    import attrs

    with pytest.raises(otplug.ConfigError, match=r"marginals: solver 'sinkhorn' .*asks for marginals = 'exact'"):
        otplug.OTLoss(attrs.evolve(cfg, tau_src=math.inf, tau_tgt=math.inf))


def test_check_plan_is_the_one_place():
    M = _cost()
    plan = torch.full_like(M, 1 / M.numel())
    unb = check_plan("kl-unbalanced", plan, M, reg=0.05, reg_m=(1.0, 1.0))
    assert not unb.ok and set(unb.metrics) >= {"ot_mass_bound", "ot_mass_excess", "ot_marginal_error/src"}
    bal = check_plan("balanced", plan, M, reg=0.05, reg_m=(math.inf, math.inf))
    assert bal.ok and bal.metrics["ot_marginal_error/src"] < 1e-15 and "ot_mass_excess" not in bal.metrics
    assert check_plan(None, plan, M, reg=0.05, reg_m=(1.0, 1.0)).metrics == unb.metrics


# -- configs ----------------------------------------------------------------------------------------------------
def test_exact_marginals_from_toml_yaml_and_json(tmp_path):
    toml = tmp_path / "b.toml"
    toml.write_text('solver = "sinkhorn-balanced"\ntau_src = inf\ntau_tgt = inf\nreg = 0.1\n'
                    '[[terms]]\ntype = "label"\nsrc_key = "x"\n')
    yaml = tmp_path / "b.yaml"
    yaml.write_text("solver: pot-balanced\ntau_src: .inf\ntau_tgt: .inf\nterms:\n  - {type: label, src_key: x}\n")
    js = tmp_path / "b.json"
    js.write_text(json.dumps({"solver": "sinkhorn-balanced", "marginals": "exact", "terms": TERMS}))
    for path in (toml, yaml, js):
        cfg = otplug.load_config(path)
        assert cfg.marginals == "exact" and cfg.reg_m == (math.inf, math.inf)
        from otplug.config import dump_config

        dumped = dump_config(cfg)
        assert "tau_src" not in dumped and dumped["marginals"] == "exact"
        json.dumps(dumped, allow_nan=False)  # JSON-able without inf
        assert otplug.load_config(dumped) == cfg


def test_config_errors_name_the_field_and_the_solver(tmp_path):
    cases = [
        (_cfg("sinkhorn", "exact"), r"marginals: solver 'sinkhorn' .*solvers for marginals = 'exact': "
                                    r"pot-balanced, sinkhorn-balanced"),
        ({**_cfg("pot"), "tau_src": math.inf}, r"tau_src: solver 'pot' .*marginals = 'exact-src'.*no installed "
                                                r"solver declares the semi-relaxed problem"),
        ({"terms": TERMS, "solver": "sinkhorn-balanced", "tau_tgt": 0.1},
         r"tau_tgt: is 0.1 \(a KL-relaxed marginal\), but solver 'sinkhorn-balanced' .*solves balanced OT"),
        (_cfg("sinkhorn-balanced", "exact", tau_tgt=0.1), r"tau_tgt: is 0.1, but marginals = 'exact'"),
        (_cfg("sinkhorn-balanced", "all"), r"marginals: must be one of 'relaxed', 'exact'"),
        ({"terms": TERMS, "marginals": "relaxed", "tau_src": math.inf}, r"tau_src: is inf .*marginals = 'relaxed'"),
    ]
    for cfg, pattern in cases:
        with pytest.raises(otplug.ConfigError, match=pattern):
            otplug.load_config(cfg)
    # the seed's unbalanced defaults are unchanged
    cfg = otplug.load_config({"features": [{"src_key": "x"}]})
    assert (cfg.reg, cfg.tau_src, cfg.tau_tgt, cfg.solver, cfg.marginals) == (0.01, 0.01, 0.01, "sinkhorn", "relaxed")


def test_a_balanced_solver_needs_no_tau(otplug_registry, tmp_path):
    """Issue #28: a config naming a balanced-declared solver and no tau gets exact marginals (the default tau is the
    unbalanced default's, never asked for); a third-party balanced solver the same way, from a file too."""
    n, m = 5, 7
    _register(otplug_registry, lambda M: torch.full_like(M, 1.0 / (n * m)), problem="balanced", name="indep")
    for solver in ("sinkhorn-balanced", "pot-balanced", "indep"):
        cfg = otplug.load_config({"terms": TERMS, "solver": solver, "reg": 0.1})
        assert cfg.marginals == "exact" and cfg.reg_m == (math.inf, math.inf), solver
        res = otplug.OTLoss(cfg).from_cost(_cost(n, m))
        assert res.metrics["ot_marginal_error/src"] < 1e-3 and res.metrics["ot_marginal_error/tgt"] < 1e-3, solver
    path = tmp_path / "b.toml"
    path.write_text('solver = "sinkhorn-balanced"\n[[terms]]\ntype = "label"\nsrc_key = "x"\n')
    assert otplug.load_config(path).marginals == "exact"
    # an unbalanced solver keeps the unbalanced defaults
    assert otplug.load_config({"terms": TERMS, "solver": "sinkhorn"}).marginals == "relaxed"


def test_check_config_cli_is_one_line(tmp_path, capsys):
    from otplug.cli import main

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_cfg("sinkhorn", "exact")))
    assert main(["check-config", str(path)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "marginals: solver 'sinkhorn'" in err


# -- issue 21: one extreme cost entry ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", sorted(BUILTINS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_outlier_entry_gets_no_mass_on_every_builtin_solver(solver, dtype):
    g = torch.Generator().manual_seed(7)
    M = torch.rand(8, 8, generator=g, dtype=dtype) * 0.999  # costs in [0, 1)
    outlier, large = M.clone(), M.clone()
    outlier[2, 5], large[2, 5] = 1e30, 50.0  # 50 / reg = 1000: exp(-1000) is 0 already
    cfg = _cfg(solver, BUILTINS[solver], reg=0.05, on_collapse="raise",
               **({"solver_options": {"max_iter": 20000}} if solver.startswith("pot") else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = otplug.OTLoss(cfg).from_cost(outlier)
        ref = otplug.OTLoss(cfg).from_cost(large)
    assert bool(torch.isfinite(out.plan).all()) and float(out.plan[2, 5]) == 0.0
    assert out.metrics["ot_loss"] == pytest.approx(ref.metrics["ot_loss"], rel=1e-4)
    torch.testing.assert_close(out.plan, ref.plan, rtol=1e-4, atol=1e-7)


def test_genuinely_tiny_reg_still_raises_with_an_outlier():
    M = _cost(8, 8) * 4
    M[0, 0] = 1e30
    with pytest.raises(OtplugError, match=r"^reg = 1e-16 is too small for this cost"):
        LogSinkhornSolver(SinkhornConfig(max_iter=300)).solve(M, reg=1e-16, reg_m=(0.05, 0.05))


# -- the CLI ----------------------------------------------------------------------------------------------------
def test_list_solvers_shows_the_problem(capsys):
    from otplug.cli import main

    assert main(["list", "solvers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {n: rows[n]["problem"] for n in BUILTINS} == {
        "sinkhorn": "kl-unbalanced", "pot": "kl-unbalanced", "pot-torch": "kl-unbalanced",
        "sinkhorn-balanced": "balanced", "pot-balanced": "balanced"}
    assert all(rows[n]["problem_declared"] for n in BUILTINS)
    assert main(["list", "solvers"]) == 0
    text = capsys.readouterr().out
    assert "[balanced] reference of balanced OT" in text and "[kl-unbalanced] default" in text
