r"""Shared pieces of the solvers: the result record, input checks, and the closed-form diagonal prior.

The built-in ``sinkhorn``, ``pot`` and ``pot-torch`` solve POT's KL-unbalanced entropic problem
(``reg_type="kl"``; ``sinkhorn-balanced`` and ``pot-balanced`` its ``tau = inf`` limit, balanced OT):

.. math::
    \pi^\star = \arg\min_{\pi \ge 0} \langle \pi, M \rangle
        + \varepsilon\, \mathrm{KL}(\pi \,|\, c)
        + \tau_1 \mathrm{KL}(\pi \mathbf{1} \,|\, a) + \tau_2 \mathrm{KL}(\pi^\top \mathbf{1} \,|\, b),
    \qquad \mathrm{KL}(x|y) = \textstyle\sum x \log(x/y) - x + y,

with :math:`\varepsilon` = ``reg``, :math:`(\tau_1, \tau_2)` = ``reg_m`` and :math:`c = a b^\top`, or
:math:`c = I/n` for the diagonal prior (``heuristic=True``).

Diagonal prior in closed form. :math:`\mathrm{KL}(\pi|c)` is infinite unless :math:`\pi \ll c`, so with
:math:`c = I/n` every off-diagonal entry of :math:`\pi^\star` is exactly 0 and the problem splits into one
scalar problem per pair :math:`(i, i)`:

.. math::
    \min_{p \ge 0}\; p M_{ii} + \varepsilon \mathrm{KL}(p|1/n) + \tau_1 \mathrm{KL}(p|a_i) + \tau_2 \mathrm{KL}(p|b_i)
    \;\Longrightarrow\;
    \log p_i = \frac{\varepsilon \log(1/n) + \tau_1 \log a_i + \tau_2 \log b_i - M_{ii}}{\varepsilon + \tau_1 + \tau_2}.

This is the fixed point POT's iteration converges to (it needs no iterations and cannot underflow in the
log domain; a ``tau = inf`` side forces :math:`p_i` to its marginal).

Mass bound. For :math:`M \ge 0` the optimal plan's mass :math:`m = \sum_{ij} \pi^\star_{ij}` obeys

.. math::
    m \le \exp\Big(\frac{\varepsilon \log m_c + \tau_1 \log m_a + \tau_2 \log m_b - \min M}
                          {\varepsilon + \tau_1 + \tau_2}\Big),
    \qquad m_a = \textstyle\sum a,\ m_b = \sum b,\ m_c = \sum c

(1 for uniform marginals with ``min M = 0``). Proof: :math:`t \mapsto F(t \pi^\star)` is minimal at
:math:`t = 1`, and :math:`\frac{d}{dt}[t x \log(t x / y) - t x + y]_{t=1} = x \log(x/y)`, so
:math:`\langle \pi^\star, M\rangle + \varepsilon \sum \pi \log\frac{\pi}{c} + \tau_1 \sum r \log\frac{r}{a}
+ \tau_2 \sum s \log\frac{s}{b} = 0` (:math:`r, s` the plan's marginals). The log-sum inequality bounds each sum
from below by :math:`m \log(m / m_\cdot)` and :math:`\langle \pi^\star, M\rangle \ge m \min M`; divide by
:math:`m`. Equality holds for a constant cost. With ``tau = inf`` on one side the mass is that marginal's mass.
A plan above the bound is wrong, whatever a solver says about convergence (:func:`mass_bound`); ``OTLoss``
checks it on every plan of a solver that declares (or leaves implied) the ``kl-unbalanced`` problem, once, in
:func:`otplug.solvers.problems.check_plan`. The other problems a solver may declare (balanced, semi-relaxed,
custom) and their checks are stated in :mod:`otplug.solvers.problems`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import torch

from otplug.errors import BatchError, OtplugError

__all__ = [
    "Prepared",
    "SolveResult",
    "UnbalancedSolver",
    "MASS_BOUND_SLACK",
    "check_reg",
    "collapse_message",
    "diagonal_prior_plan",
    "health_warnings",
    "log_mass_bound",
    "mass_bound",
    "mass_excess",
    "prepare",
]

#: relative tolerance of the mass-bound check, by the plan's dtype (rounding of a converged plan near the
#: bound, which it only reaches for a constant cost)
MASS_BOUND_SLACK = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-3, torch.float64: 1e-5}


@attrs.frozen
class SolveResult:
    """What a solver returns.

    ``plan``: the transport plan, M's shape and device (``pot`` returns float64).
    ``iterations``: iterations run (the maximum over problems for a batch).
    ``converged``: every problem met the solver's tolerance.
    ``error``: the solver's own final error measure (largest over problems; see each solver).
    ``info``: health numbers as floats, e.g. ``mass``, ``headroom``, ``warm_started`` (the core adds the checks of
    the declared problem itself: ``ot_mass_bound``/``ot_mass_excess``, ``ot_marginal_error/<side>``).
    """

    plan: torch.Tensor
    iterations: int
    converged: bool
    error: float
    info: dict[str, float] = attrs.field(factory=dict)


class UnbalancedSolver(Protocol):
    """The interface ``OTLoss`` calls: ``factory(config)`` builds one, ``solve`` is called once per step."""

    def solve(
        self,
        M: torch.Tensor,
        *,
        reg: float,
        reg_m: tuple[float, float],
        heuristic: bool = False,
        a: torch.Tensor | None = None,
        b: torch.Tensor | None = None,
    ) -> SolveResult: ...

    def reset(self) -> None: ...


@attrs.frozen
class Prepared:
    """Checked inputs, always batched: ``M`` (P, n, m), ``a`` (P, n), ``b`` (P, m), in ``M``'s dtype."""

    M: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    reg: float
    tau: tuple[float, float]
    batched: bool


def _num(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OtplugError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_reg(reg: Any, reg_m: Any) -> tuple[float, tuple[float, float]]:
    """Validate ``reg`` (finite, > 0) and ``reg_m`` (a number or a pair, each > 0, ``inf`` allowed)."""
    eps = _num("reg", reg)
    if not math.isfinite(eps) or eps <= 0:
        raise OtplugError(f"reg must be a finite number > 0, got {reg!r}")
    if isinstance(reg_m, (int, float)) and not isinstance(reg_m, bool):
        pair: Sequence[Any] = (reg_m, reg_m)
    else:
        pair = tuple(reg_m)
        if len(pair) == 1:
            pair = (pair[0], pair[0])
        if len(pair) != 2:
            raise OtplugError(f"reg_m must be a number or a pair (tau_src, tau_tgt), got {reg_m!r}")
    taus = tuple(_num("reg_m", t) for t in pair)
    for t in taus:
        if math.isnan(t) or t <= 0:
            raise OtplugError(f"reg_m entries must be > 0 (inf for a hard marginal), got {reg_m!r}")
    return eps, (taus[0], taus[1])


def _marginal(w: torch.Tensor | None, P: int, k: int, M: torch.Tensor, name: str, side: str) -> torch.Tensor:
    if w is None:
        return torch.full((P, k), 1.0 / k, dtype=M.dtype, device=M.device)
    w = torch.as_tensor(w).detach().to(device=M.device, dtype=M.dtype)
    if w.shape == (k,):
        w = w.expand(P, k)
    elif w.shape != (P, k):
        raise BatchError(f"marginal {name} must have shape ({k},) or ({P}, {k}) for {side}, got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise BatchError(f"marginal {name} must be finite and > 0 everywhere (shape {tuple(w.shape)})")
    return w


def prepare(
    M: torch.Tensor,
    reg: Any,
    reg_m: Any,
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    heuristic: bool,
    dtype: torch.dtype | None = None,
) -> Prepared:
    """Check shapes and values; return batched (P, n, m) inputs in ``dtype`` (default: M's float dtype)."""
    if not isinstance(M, torch.Tensor):
        raise BatchError(f"the cost must be a torch.Tensor, got {type(M).__name__}")
    if M.ndim not in (2, 3):
        raise BatchError(f"the cost must have shape (n, m) or (P, n, m), got {tuple(M.shape)}")
    if M.shape[-2] == 0 or M.shape[-1] == 0 or (M.ndim == 3 and M.shape[0] == 0):
        raise BatchError(f"the cost is empty: shape {tuple(M.shape)}")
    eps, taus = check_reg(reg, reg_m)
    n, m = M.shape[-2], M.shape[-1]
    if heuristic and n != m:
        raise BatchError(
            f"heuristic=True (the diagonal prior c = eye(n)/n, pairing row i with column i) needs a square cost; "
            f"got {n} source x {m} target samples (cost shape {tuple(M.shape)})"
        )
    if dtype is None:
        dtype = M.dtype if M.dtype in (torch.float32, torch.float64) else torch.float32
    batched = M.ndim == 3
    M3 = (M if batched else M.unsqueeze(0)).detach().to(dtype)
    if not bool(torch.isfinite(M3).all()):
        raise BatchError(f"the cost (shape {tuple(M.shape)}) contains NaN or inf values")
    P = M3.shape[0]
    return Prepared(
        M=M3,
        a=_marginal(a, P, n, M3, "a", f"{n} source samples"),
        b=_marginal(b, P, m, M3, "b", f"{m} target samples"),
        reg=eps,
        tau=taus,
        batched=batched,
    )


def diagonal_prior_plan(p: Prepared) -> torch.Tensor:
    """Closed-form plan (P, n, n) for the diagonal prior ``c = eye(n)/n`` (see the module docstring)."""
    M, a, b = p.M, p.a, p.b
    n = M.shape[-1]
    t1, t2 = p.tau
    diag = torch.diagonal(M, dim1=-2, dim2=-1)
    if math.isinf(t1):
        logp = torch.log(a)
    elif math.isinf(t2):
        logp = torch.log(b)
    else:
        logp = (p.reg * math.log(1.0 / n) + t1 * torch.log(a) + t2 * torch.log(b) - diag) / (p.reg + t1 + t2)
    return torch.diag_embed(torch.exp(logp))


def log_mass_bound(
    min_cost: torch.Tensor | float,
    reg: float,
    tau: tuple[float, float],
    a_mass: torch.Tensor | float = 1.0,
    b_mass: torch.Tensor | float = 1.0,
    c_mass: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Log of the upper bound on the mass of the optimal KL-unbalanced plan (see the module docstring).

    ``min_cost``: ``min M`` per problem (clamped at 0); ``a_mass``, ``b_mass``: the marginals' masses;
    ``c_mass``: the reference measure's mass (default ``a_mass * b_mass``, i.e. ``c = a b^T``; 1 for the
    diagonal prior ``eye(n)/n``). Returns a float64 tensor (one bound per problem for tensor inputs); in the
    log domain so that a bound below the smallest float is still exact.
    """
    m = torch.as_tensor(min_cost, dtype=torch.float64).clamp_min(0.0)
    la = torch.log(torch.as_tensor(a_mass, dtype=torch.float64))
    lb = torch.log(torch.as_tensor(b_mass, dtype=torch.float64))
    lc = la + lb if c_mass is None else torch.log(torch.as_tensor(c_mass, dtype=torch.float64))
    t1, t2 = tau
    if math.isinf(t1) and math.isinf(t2):
        return torch.minimum(la, lb) + 0 * m
    if math.isinf(t1):
        return la + 0 * m
    if math.isinf(t2):
        return lb + 0 * m
    return (reg * lc + t1 * la + t2 * lb - m) / (reg + t1 + t2)


def mass_bound(*args: Any, **kwargs: Any) -> torch.Tensor:
    """``exp(log_mass_bound(...))``: the bound itself (may underflow to 0 for a large ``min M``)."""
    return log_mass_bound(*args, **kwargs).exp()


def mass_excess(mass: torch.Tensor | float, log_bound: torch.Tensor | float) -> torch.Tensor:
    """``mass / bound`` per problem, computed in the log domain (0 for an empty plan; > 1 means wrong)."""
    mass = torch.as_tensor(mass, dtype=torch.float64)
    log_bound = torch.as_tensor(log_bound, dtype=torch.float64)
    out = torch.exp(torch.log(mass.clamp_min(0.0)) - log_bound)
    return torch.where(torch.isnan(mass), torch.full_like(out, float("inf")), out)


def plan_info(plan: torch.Tensor, p: Prepared) -> dict[str, float]:
    """A solver's own health numbers of a (P, n, m) plan: mass (mean, min, smallest ratio to the smaller
    marginal's mass) and the ``min(M)/reg`` headroom. The checks of the declared problem (mass bound, exact
    marginals) are not here: the core runs them once per plan (:mod:`otplug.solvers.problems`)."""
    with torch.no_grad():
        plan = plan.to(p.M.dtype)
        mass = plan.sum(dim=(-2, -1))
        tgt_mass = torch.minimum(p.a.sum(-1), p.b.sum(-1))
        m_min = p.M.amin(dim=(-2, -1))
        return {
            "mass": float(mass.mean()),
            "mass_min": float(mass.min()),
            "mass_ratio_min": float((mass / tgt_mass).min()),
            "headroom": float(m_min.min()) / p.reg,
        }


def collapse_message(mass: float, headroom: float, solver: str | None = None) -> str:
    """The one explanation of a plan that (almost) lost its mass, and what to do about it (used by
    :func:`health_warnings` and by ``OTLoss``'s collapse handling)."""
    who = f" with solver {solver!r}" if solver else ""
    msg = (f"OT plan collapsed (plan mass {mass:.3g}{who}; min(M)/reg = {headroom:.3g}): the OT loss is ~0 and "
           "trains nothing.")
    if solver in ("pot", "pot-torch") and headroom > 50:
        msg += " exp(-M/reg) underflows in POT: use solver = 'sinkhorn' (log-domain)."
    msg += (" If the true plan is empty, costs dwarf reg and tau: normalise the cost (cost_normalization = "
            "'mean') or raise reg / tau_src / tau_tgt.")
    return msg


def health_warnings(result: SolveResult, *, degenerate_mass: float = 1e-6, check: Any = None) -> list[str]:
    """Human-readable warnings for a result: iteration cap hit or stalled, collapsed or degenerate plan, and
    ``check`` (an :class:`otplug.solvers.problems.PlanCheck` of the plan, e.g. from ``check_plan``) when it
    failed (mass above the bound, marginals off)."""
    out = []
    info = result.info
    if info.get("precision_stalled", 0.0) >= 1.0:
        out.append(
            f"OT solver stalled at the rounding floor of its working precision (error {result.error:.3g}); the "
            "plan is not accurate: raise reg, normalise the cost or solve in float64"
        )
    elif not result.converged:
        out.append(
            f"OT solver stopped at its iteration cap ({result.iterations} iterations, error {result.error:.3g}); "
            "raise max_iter or reg"
        )
    if check is not None and not check.ok:
        out.append(f"OT plan is wrong: {check.message}")
    collapsed = info.get("collapsed", 0.0) >= 1.0
    if collapsed or info.get("mass_ratio_min", 1.0) < degenerate_mass:
        out.append(collapse_message(info.get("mass_min", 0.0), info.get("headroom", float("nan"))))
    return out
