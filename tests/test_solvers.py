"""Solvers: POT parity, collapse regimes, warm start, batching, closed-form prior, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otplug.errors import BatchError, OtplugError
from otplug.solvers.base import SolveResult, health_warnings
from otplug.solvers.configs import PotConfig, SinkhornConfig
from otplug.solvers.pot_ref import PotSolver, PotTorchSolver
from otplug.solvers.sinkhorn import LogSinkhornSolver

torch.set_num_threads(1)

M_SPEC = torch.tensor([[0.01, 5.54, 10.5], [2.81, 0.54, 4.5], [12.01, 4.74, 0.5]], dtype=torch.float64)


def costs(n: int, m: int, seed: int, offset: float = 0.0, dim: int = 8, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = torch.randn(m, dim, generator=g, dtype=torch.float64) + 0.3
    M = torch.cdist(x, y) ** 2
    return (M / M.mean() + offset).to(dtype)


def truth(M: torch.Tensor, reg: float, tau: tuple[float, float], **kw) -> SolveResult:
    """float64 log-domain truth: our solver, tight tolerance, many iterations."""
    cfg = SinkhornConfig(tol=1e-12, max_iter=200_000, dtype="float64", warm_start=False)
    return LogSinkhornSolver(cfg).solve(M.double(), reg=reg, reg_m=tau, **kw)


def rel(x, y) -> float:
    return abs(float(x) / float(y) - 1.0)


# ---------------------------------------------------------------- reference
def test_worked_example_pot():
    r = PotSolver(PotConfig()).solve(M_SPEC, reg=0.1, reg_m=(0.05, 0.05))
    assert r.plan.dtype == torch.float64 and r.plan.shape == (3, 3)
    assert float((r.plan * M_SPEC).sum()) == pytest.approx(1.671347742662e-02, rel=1e-9)
    assert float(r.plan.sum()) == pytest.approx(2.117951650508e-01, rel=1e-9)
    assert r.converged and r.iterations > 0 and r.info["collapsed"] == 0.0
    h = PotSolver(PotConfig()).solve(M_SPEC, reg=0.1, reg_m=(0.05, 0.05), heuristic=True)
    assert float((h.plan * M_SPEC).sum()) == pytest.approx(2.894859170244e-02, rel=1e-9)
    assert torch.count_nonzero(h.plan - torch.diag(torch.diagonal(h.plan))) == 0


def test_pot_equals_direct_call():
    import ot

    M = costs(7, 5, 0)
    a, b = torch.full((7,), 1 / 7, dtype=torch.float64), torch.full((5,), 1 / 5, dtype=torch.float64)
    ref = ot.unbalanced.sinkhorn_knopp_unbalanced(
        a.numpy(), b.numpy(), M.numpy(), 0.05, reg_m=(0.5, 2.0), reg_type="kl", numItermax=1000, stopThr=1e-6
    )
    r = PotSolver(PotConfig()).solve(M, reg=0.05, reg_m=(0.5, 2.0))
    assert torch.equal(r.plan, torch.from_numpy(ref))
    t = PotTorchSolver(PotConfig()).solve(M, reg=0.05, reg_m=(0.5, 2.0))
    torch.testing.assert_close(t.plan, r.plan, rtol=1e-10, atol=1e-14)


def test_pot_reports_collapse():
    r = PotSolver(PotConfig()).solve(M_SPEC * 100, reg=0.01, reg_m=(1.0, 1.0))
    assert r.info["collapsed"] == 1.0 and not r.converged and r.iterations == 0
    assert any("collapsed" in w for w in health_warnings(r))


# ---------------------------------------------------------------- default solver
@pytest.mark.parametrize(
    "reg,tau,offset",
    [(0.1, (0.05, 0.05), 0.0), (0.1, (1.0, 1.0), 0.0), (0.05, (0.5, 2.0), 0.0), (0.02, (1.0, 1.0), 1.0),
     (0.1, (10.0, 10.0), 0.0), (0.1, (0.01, 0.01), 0.0)],
)
def test_sinkhorn_matches_pot_where_pot_converges(reg, tau, offset):
    M = costs(24, 17, 1, offset)
    ref = PotSolver(PotConfig(max_iter=100_000, tol=1e-12)).solve(M, reg=reg, reg_m=tau)
    assert ref.converged and ref.info["collapsed"] == 0.0
    r = LogSinkhornSolver(SinkhornConfig()).solve(M, reg=reg, reg_m=tau)
    assert r.converged and r.plan.dtype == torch.float64 and r.plan.shape == M.shape
    assert rel((r.plan * M).sum(), (ref.plan * M).sum()) < 1e-6
    assert rel(r.plan.sum(), ref.plan.sum()) < 1e-6
    assert float((r.plan - ref.plan).abs().sum() / ref.plan.sum()) < 1e-6


def test_worked_example_sinkhorn():
    r = LogSinkhornSolver().solve(M_SPEC, reg=0.1, reg_m=(0.05, 0.05))
    # POT stops at its tolerance 6.6e-8 away from the fixed point this solver converges to
    assert float((r.plan * M_SPEC).sum()) == pytest.approx(1.671347742662e-02, rel=1e-6)
    assert float(r.plan.sum()) == pytest.approx(2.117951650508e-01, rel=1e-6)


def test_collapse_regime_matches_truth():
    # costs dwarf reg: exp(-M/reg) underflows even in float64; POT returns an all-zero plan
    M = costs(16, 16, 2, offset=2.0) * 5.0
    reg, tau = 0.001, (1.0, 1.0)
    pot = PotSolver(PotConfig()).solve(M, reg=reg, reg_m=tau)
    assert pot.info["collapsed"] == 1.0 and float(pot.plan.sum()) == 0.0
    t = truth(M, reg, tau)
    assert float(t.plan.sum()) > 1e-3  # the true plan carries mass
    for dtype in (torch.float64, torch.float32):
        r = LogSinkhornSolver().solve(M.to(dtype), reg=reg, reg_m=tau)
        assert r.converged and torch.isfinite(r.plan).all()
        assert rel((r.plan.double() * M).sum(), (t.plan * M).sum()) < 1e-4
        assert rel(r.plan.double().sum(), t.plan.sum()) < 1e-4


def test_iteration_cap_regime_matches_truth():
    # reg << tau: POT hits its 1000-iteration cap
    M = costs(32, 32, 3)
    reg, tau = 0.001, (1.0, 1.0)
    pot = PotSolver(PotConfig()).solve(M, reg=reg, reg_m=tau)
    assert not pot.converged
    r = LogSinkhornSolver().solve(M, reg=reg, reg_m=tau)
    t = truth(M, reg, tau)
    assert r.converged and r.iterations < 1000
    assert rel((r.plan * M).sum(), (t.plan * M).sum()) < 1e-6


def test_warm_start_fewer_iterations_same_answer():
    M0 = costs(48, 48, 4)
    g = torch.Generator().manual_seed(5)
    s_warm = LogSinkhornSolver(SinkhornConfig(warm_start=True))
    s_cold = LogSinkhornSolver(SinkhornConfig(warm_start=False))
    warm_it, cold_it = 0, 0
    for step in range(6):
        M = M0 * (1 + 0.02 * torch.rand(M0.shape, generator=g, dtype=torch.float64))
        rw = s_warm.solve(M, reg=0.01, reg_m=(1.0, 1.0))
        rc = s_cold.solve(M, reg=0.01, reg_m=(1.0, 1.0))
        assert rw.info["warm_started"] == float(step > 0) and rc.info["warm_started"] == 0.0
        assert rel((rw.plan * M).sum(), (rc.plan * M).sum()) < 1e-6
        if step > 0:
            warm_it += rw.iterations
            cold_it += rc.iterations
    assert warm_it <= 0.7 * cold_it
    # a shape change resets the warm start
    r = s_warm.solve(costs(40, 48, 6), reg=0.01, reg_m=(1.0, 1.0))
    assert r.info["warm_started"] == 0.0
    s_warm.reset()
    assert s_warm.solve(M0, reg=0.01, reg_m=(1.0, 1.0)).info["warm_started"] == 0.0


def test_batched_matches_one_by_one():
    Ms = torch.stack([costs(12, 9, s, offset=0.5 * s) for s in range(4)])
    Ms[3] *= 20  # a much harder problem in the same batch
    cfg = SinkhornConfig(warm_start=False)
    rb = LogSinkhornSolver(cfg).solve(Ms, reg=0.02, reg_m=(0.5, 0.5))
    assert rb.plan.shape == Ms.shape and rb.converged
    iters = []
    for i in range(4):
        ri = LogSinkhornSolver(cfg).solve(Ms[i], reg=0.02, reg_m=(0.5, 0.5))
        iters.append(ri.iterations)
        torch.testing.assert_close(rb.plan[i], ri.plan, rtol=1e-6, atol=1e-12)
    assert rb.iterations == max(iters)
    pb = PotSolver(PotConfig()).solve(Ms[:2], reg=0.02, reg_m=(0.5, 0.5))
    assert pb.plan.shape == (2, 12, 9)
    torch.testing.assert_close(pb.plan[1], PotSolver(PotConfig()).solve(Ms[1], reg=0.02, reg_m=(0.5, 0.5)).plan)


@pytest.mark.parametrize("tau", [(0.05, 0.05), (1.0, 0.2), (10.0, 10.0)])
def test_closed_form_prior_matches_pot(tau):
    M = costs(6, 6, 7)
    ref = PotSolver(PotConfig(max_iter=100_000, tol=1e-13)).solve(M, reg=0.1, reg_m=tau, heuristic=True)
    r = LogSinkhornSolver().solve(M, reg=0.1, reg_m=tau, heuristic=True)
    assert r.iterations == 0 and r.converged and r.info["closed_form"] == 1.0
    torch.testing.assert_close(r.plan, ref.plan, rtol=1e-8, atol=1e-15)
    assert torch.count_nonzero(r.plan - torch.diag(torch.diagonal(r.plan))) == 0
    h = LogSinkhornSolver().solve(M_SPEC, reg=0.1, reg_m=(0.05, 0.05), heuristic=True)
    assert float((h.plan * M_SPEC).sum()) == pytest.approx(2.894859170244e-02, rel=1e-6)


def test_heuristic_non_square_raises_with_shapes():
    for solver in (LogSinkhornSolver(), PotSolver(PotConfig()), PotTorchSolver(PotConfig())):
        with pytest.raises(BatchError, match=r"4 source x 5 target"):
            solver.solve(costs(4, 5, 0), reg=0.1, reg_m=(1.0, 1.0), heuristic=True)


def test_float32_works_and_returns_float32():
    M = costs(30, 20, 8, dtype=torch.float32)
    r = LogSinkhornSolver().solve(M, reg=0.05, reg_m=(1.0, 1.0))
    assert r.plan.dtype == torch.float32 and r.converged and r.info["float64"] == 0.0
    t = truth(M, 0.05, (1.0, 1.0))
    assert rel((r.plan.double() * M.double()).sum(), (t.plan * M.double()).sum()) < 1e-4
    f32 = LogSinkhornSolver(SinkhornConfig(dtype="float32")).solve(M * 100, reg=0.05, reg_m=(1.0, 1.0))
    assert torch.isfinite(f32.plan).all()
    auto = LogSinkhornSolver().solve(M * 100, reg=0.05, reg_m=(1.0, 1.0))
    assert auto.info["float64"] == 1.0 and auto.plan.dtype == torch.float32


def test_infinite_tau_is_balanced():
    M = costs(10, 10, 9)
    r = LogSinkhornSolver().solve(M, reg=0.1, reg_m=(math.inf, math.inf))
    torch.testing.assert_close(r.plan.sum(1), torch.full((10,), 0.1, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_bad_inputs():
    s = LogSinkhornSolver()
    with pytest.raises(OtplugError, match="reg must be"):
        s.solve(M_SPEC, reg=0.0, reg_m=(1.0, 1.0))
    with pytest.raises(OtplugError, match="reg_m"):
        s.solve(M_SPEC, reg=0.1, reg_m=(1.0, -1.0))
    with pytest.raises(BatchError, match="NaN"):
        s.solve(M_SPEC * float("nan"), reg=0.1, reg_m=(1.0, 1.0))
    with pytest.raises(BatchError, match=r"\(3,\)"):
        s.solve(M_SPEC, reg=0.1, reg_m=(1.0, 1.0), a=torch.ones(4))
    with pytest.raises(TypeError):
        SinkhornConfig(tol="1e-6")
    with pytest.raises(ValueError):
        SinkhornConfig(dtype="float16")


def test_health_info_and_cap_warning():
    r = LogSinkhornSolver(SinkhornConfig(max_iter=20)).solve(costs(32, 32, 3), reg=0.001, reg_m=(1.0, 1.0))
    assert not r.converged and r.iterations == 20
    assert any("iteration cap" in w for w in health_warnings(r))
    # the problem's checks (mass bound, marginals) are the core's, reported once as ot_mass_*/ot_marginal_error/*
    assert not {"mass_bound", "mass_excess", "marginal_error"} & set(r.info)
    for key in ("mass", "headroom", "warm_started", "float64"):
        assert key in r.info and isinstance(r.info[key], float)
    # degenerate: costs dwarf reg and tau -> true mass ~ 0
    d = LogSinkhornSolver().solve(M_SPEC * 100 + 50, reg=0.01, reg_m=(0.01, 0.01))
    assert any("normalise the cost" in w for w in health_warnings(d))


# ---------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 7),
    m=st.integers(1, 7),
    seed=st.integers(0, 10_000),
    scale=st.floats(0.01, 50.0),
    reg=st.sampled_from([0.01, 0.1, 1.0]),
    tau=st.sampled_from([0.01, 0.5, 5.0]),
)
def test_plan_properties(n, m, seed, scale, reg, tau):
    M = costs(n, m, seed) * scale if n > 1 or m > 1 else torch.full((1, 1), scale, dtype=torch.float64)
    r = LogSinkhornSolver(SinkhornConfig(warm_start=False)).solve(M, reg=reg, reg_m=(tau, tau))
    assert torch.isfinite(r.plan).all() and (r.plan >= 0).all()
    # mass is at most the geometric mean of the marginals' masses when tau1 == tau2 (here both 1)
    assert float(r.plan.sum()) <= 1.0 + 1e-6
    assert r.converged


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6))
def test_tends_to_balanced_as_tau_grows(seed, n):
    M = costs(n, n, seed)
    errs = []
    for tau in (0.1, 10.0, 1000.0):
        r = LogSinkhornSolver(SinkhornConfig(warm_start=False)).solve(M, reg=0.1, reg_m=(tau, tau))
        errs.append(float((r.plan.sum(1) - 1.0 / n).abs().sum() + (r.plan.sum(0) - 1.0 / n).abs().sum()))
    assert errs[0] >= errs[1] >= errs[2] and errs[2] < 1e-2
