r"""The OT problems a solver declares (``Solver(problem=...)``), and the one place where the core checks a plan.

Every problem has a cost :math:`M \in \mathbb{R}^{n \times m}_{\ge 0}`, positive marginals :math:`a, b`
(uniform :math:`1/n`, :math:`1/m` in ``OTLoss``), the entropic ``reg`` :math:`\varepsilon > 0` and the reference
measure :math:`c = a b^\top` (or :math:`I/n` with the diagonal prior, ``heuristic=True``), with
:math:`\mathrm{KL}(x|y) = \sum x \log(x/y) - x + y`.

``"kl-unbalanced"`` -- POT's ``ot.unbalanced.sinkhorn_knopp_unbalanced(..., reg_type="kl")``, the seed's
problem; ``reg_m = (tau_src, tau_tgt)`` finite:

.. math::
    \min_{\pi \ge 0} \langle \pi, M \rangle + \varepsilon \mathrm{KL}(\pi | c)
        + \tau_1 \mathrm{KL}(\pi \mathbf{1} | a) + \tau_2 \mathrm{KL}(\pi^\top \mathbf{1} | b).

*Checked*: the plan's mass is at most the problem's bound
:math:`\exp\big((\varepsilon \log m_c + \tau_1 \log m_a + \tau_2 \log m_b - \min M) / (\varepsilon + \tau_1 + \tau_2)\big)`
(``otplug.solvers.base``, derivation there; metrics ``ot_mass_bound``, ``ot_mass_excess`` = mass / bound).

``"balanced"`` -- POT's ``ot.sinkhorn`` (the ``tau = inf`` limit of the above; ``reg_m = (inf, inf)``):

.. math::
    \min_{\pi \ge 0,\ \pi \mathbf{1} = a,\ \pi^\top \mathbf{1} = b} \langle \pi, M \rangle + \varepsilon \mathrm{KL}(\pi | a b^\top).

On the feasible set :math:`\mathrm{KL}(\pi | a b^\top) = -H(\pi) - \sum_i a_i \log a_i - \sum_j b_j \log b_j + \text{const}`
with :math:`H(\pi) = -\sum \pi (\log \pi - 1)`, so the plan is that of POT's ``ot.sinkhorn(a, b, M, reg)``
(:math:`\min \langle \pi, M\rangle - \varepsilon H(\pi)`). Its Sinkhorn iteration is the unbalanced one with
:math:`\varphi_k = \tau_k / (\tau_k + \varepsilon) = 1`. *Checked*: both marginals, as the relative L1 errors
:math:`e_{src} = \|\pi \mathbf{1} - a\|_1 / \|a\|_1` and :math:`e_{tgt} = \|\pi^\top \mathbf{1} - b\|_1 / \|b\|_1`, each at
most :data:`MARGINAL_TOL` of the plan's dtype (1e-6 for float64, 1e-4 for float32 plans).

``"semi-relaxed"`` -- one exact side, one KL-relaxed side (``reg_m = (inf, tau_tgt)`` or ``(tau_src, inf)``):

.. math::
    \min_{\pi \ge 0,\ \pi \mathbf{1} = a} \langle \pi, M \rangle + \varepsilon \mathrm{KL}(\pi | c)
        + \tau_2 \mathrm{KL}(\pi^\top \mathbf{1} | b)
    \qquad \text{(or the mirror image).}

*Checked*: the exact side's marginal error, as for ``"balanced"`` (the mass then equals that marginal's mass).

``"custom"`` -- any ``reg_m`` the config gives (finite or ``inf``); the record's own
``check(plan, M, *, reg, reg_m, heuristic) -> PlanCheck`` judges the plan, its ``metrics`` become
``ot_check/<key>``.

*For every problem* the core checks, in ``OTLoss``: the plan is a floating tensor of M's shape, ``>= 0`` (beyond
rounding: an error naming the solver) and finite with non-negligible mass (else a collapse, ``ot_collapsed``);
and it logs both marginal errors (``ot_marginal_error/src``, ``ot_marginal_error/tgt``; large is normal for a
relaxed side with small ``tau``). A solver that declares nothing (``problem=None``) is checked as
``"kl-unbalanced"``, as before problems existed.

Configs (``otplug.config``): ``marginals = "relaxed"`` (default; finite ``tau_src``, ``tau_tgt``) needs a
``kl-unbalanced`` (or undeclared, or custom) solver; ``"exact"`` (``tau_src = tau_tgt = inf``) a ``balanced`` one;
``"exact-src"`` / ``"exact-tgt"`` (one ``tau = inf``) a ``semi-relaxed`` one. This module imports torch only
inside the functions that check plans (the config loader imports it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "MARGINALS",
    "MARGINAL_TOL",
    "PROBLEM_OF_MARGINALS",
    "PlanCheck",
    "check_plan",
    "marginals_of",
    "mismatch",
]

#: the config's ``marginals`` values, and the ``(tau_src, tau_tgt)`` sides each makes exact
MARGINALS = ("relaxed", "exact", "exact-src", "exact-tgt")
#: which declared problem solves which ``marginals``
PROBLEM_OF_MARGINALS = {"relaxed": "kl-unbalanced", "exact": "balanced", "exact-src": "semi-relaxed",
                        "exact-tgt": "semi-relaxed"}
#: largest relative L1 error of an exact marginal, by the plan's dtype name (rounding of a converged plan, plus
#: the stopping tolerance of a solver at its defaults: ``sinkhorn`` 1e-7, POT's ``ot.sinkhorn`` 1e-9)
MARGINAL_TOL = {"float16": 1e-2, "bfloat16": 1e-2, "float32": 1e-4, "float64": 1e-6}


def marginals_of(tau_src: float, tau_tgt: float) -> str:
    """The ``marginals`` value of a pair of relaxations (``inf`` = exact side)."""
    s, t = math.isinf(tau_src), math.isinf(tau_tgt)
    return "exact" if s and t else "exact-src" if s else "exact-tgt" if t else "relaxed"


def mismatch(problem: str | None, marginals: str) -> str | None:
    """Why a solver declaring ``problem`` cannot take a config's ``marginals`` (``None`` when it can)."""
    if problem == "custom":
        return None
    declared = problem or "kl-unbalanced"
    if PROBLEM_OF_MARGINALS[marginals] == declared:
        return None
    what = {"kl-unbalanced": "the KL-unbalanced problem (finite tau_src, tau_tgt; marginals = 'relaxed')",
            "balanced": "balanced OT (both marginals exact: marginals = 'exact', i.e. tau_src = tau_tgt = inf)",
            "semi-relaxed": "semi-relaxed OT (one exact marginal: marginals = 'exact-src' or 'exact-tgt', i.e. one "
                            "tau = inf)"}[declared]
    return what


@attrs.frozen
class PlanCheck:
    """The verdict on one plan: ``ok``; ``message`` (why not, one sentence naming what is off); ``metrics``
    (floats). A ``"custom"`` solver's ``check`` returns one; its metrics become ``ot_check/<key>``."""

    ok: bool
    message: str = ""
    metrics: Mapping[str, float] = attrs.field(factory=dict)


def check_plan(problem: str | None, plan: Any, M: Any, *, reg: float, reg_m: tuple[float, float],
               heuristic: bool = False, a: Any = None, b: Any = None) -> PlanCheck:
    """Check a finite, non-negative ``(n, m)`` plan of ``M`` against the declared ``problem`` (not ``"custom"``:
    the core calls the record's own check) and return its metrics: both marginal errors always, the mass bound
    for ``"kl-unbalanced"`` / ``None``. The one place these checks live (``OTLoss`` calls it for every plan)."""
    import torch  # noqa: PLC0415

    from otplug.solvers.base import MASS_BOUND_SLACK, log_mass_bound, mass_excess  # noqa: PLC0415

    with torch.no_grad():
        p = plan.detach().to(torch.float64)
        n, m = p.shape
        a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=p.device) if a is None else a.to(p)
        b = torch.full((m,), 1.0 / m, dtype=torch.float64, device=p.device) if b is None else b.to(p)
        rows, cols = p.sum(1), p.sum(0)
        e_src, e_tgt = torch.stack([(rows - a).abs().sum() / a.sum(), (cols - b).abs().sum() / b.sum()]).tolist()
    metrics = {"ot_marginal_error/src": e_src, "ot_marginal_error/tgt": e_tgt}
    declared = problem or "kl-unbalanced"
    if declared == "kl-unbalanced":
        mass = float(rows.sum())
        c_mass = 1.0 if heuristic else None
        log_bound = float(log_mass_bound(float(M.detach().min()), reg, reg_m, float(a.sum()), float(b.sum()), c_mass))
        excess = float(mass_excess(mass, log_bound))
        metrics.update({"ot_mass_bound": math.exp(log_bound), "ot_mass_excess": excess})
        if excess > 1.0 + MASS_BOUND_SLACK.get(plan.dtype, 1e-3):
            return PlanCheck(False, f"plan mass {mass:.4g} exceeds {math.exp(log_bound):.4g}, the largest mass the "
                             "KL-unbalanced problem allows (exp(-min(M)/(reg + tau_src + tau_tgt)); ot_mass_excess = "
                             f"{excess:.3g})", metrics)
        return PlanCheck(True, "", metrics)
    tol = MARGINAL_TOL.get(str(plan.dtype).removeprefix("torch."), 1e-4)
    metrics["ot_marginal_tol"] = tol
    exact = [side for side, tau in (("src", reg_m[0]), ("tgt", reg_m[1])) if math.isinf(tau)]
    off = [(side, metrics[f"ot_marginal_error/{side}"]) for side in exact
           if not metrics[f"ot_marginal_error/{side}"] <= tol]
    if off:
        what = ", ".join(f"{side} marginal off by {err:.3g}" for side, err in off)
        return PlanCheck(False, f"the plan does not meet the exact marginal(s) of the {declared} problem ({what} "
                         f"relative L1 > tolerance {tol:g}; ot_marginal_error/<side>)", metrics)
    return PlanCheck(True, "", metrics)
