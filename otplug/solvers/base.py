r"""Shared pieces of the solvers: the result record, input checks, and the closed-form diagonal prior.

All solvers solve POT's KL-unbalanced entropic problem (``reg_type="kl"``):

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
    "check_reg",
    "diagonal_prior_plan",
    "health_warnings",
    "prepare",
]


@attrs.frozen
class SolveResult:
    """What a solver returns.

    ``plan``: the transport plan, M's shape and device (``pot`` returns float64).
    ``iterations``: iterations run (the maximum over problems for a batch).
    ``converged``: every problem met the solver's tolerance.
    ``error``: the solver's own final error measure (largest over problems; see each solver).
    ``info``: health numbers as floats, e.g. ``mass``, ``marginal_error``, ``headroom``, ``warm_started``.
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


def plan_info(plan: torch.Tensor, p: Prepared) -> dict[str, float]:
    """Health numbers of a (P, n, m) plan: mass, largest relative marginal mismatch, min(M)/reg headroom."""
    with torch.no_grad():
        plan = plan.to(p.M.dtype)
        mass = plan.sum(dim=(-2, -1))
        rows, cols = plan.sum(-1), plan.sum(-2)
        tgt_mass = torch.minimum(p.a.sum(-1), p.b.sum(-1))
        row_err = ((rows - p.a).abs().sum(-1) / p.a.sum(-1)).max()
        col_err = ((cols - p.b).abs().sum(-1) / p.b.sum(-1)).max()
        return {
            "mass": float(mass.mean()),
            "mass_min": float(mass.min()),
            "mass_ratio_min": float((mass / tgt_mass).min()),
            "marginal_error": float(torch.maximum(row_err, col_err)),
            "headroom": float(p.M.min()) / p.reg,
        }


def health_warnings(result: SolveResult, *, degenerate_mass: float = 1e-6) -> list[str]:
    """Human-readable warnings for a result: iteration cap hit, collapsed or degenerate plan."""
    out = []
    info = result.info
    if not result.converged:
        out.append(
            f"OT solver stopped at its iteration cap ({result.iterations} iterations, error {result.error:.3g}); "
            "raise max_iter or reg"
        )
    if info.get("collapsed", 0.0) >= 1.0:
        out.append("OT plan collapsed to zero (exp(-M/reg) underflowed); the OT loss is 0 and trains nothing")
    elif info.get("mass_ratio_min", 1.0) < degenerate_mass:
        out.append(
            f"OT plan carries almost no mass ({info.get('mass_min', 0.0):.3g}; min(M)/reg = "
            f"{info.get('headroom', float('nan')):.3g}): costs dwarf reg and tau - normalise the cost "
            "(e.g. divide by its mean) or raise reg/tau"
        )
    return out
