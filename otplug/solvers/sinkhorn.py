r"""``sinkhorn``: the default solver. Log-domain / absorbed-kernel KL-unbalanced Sinkhorn on the cost's device.

Problem (POT's ``sinkhorn_knopp_unbalanced`` with ``reg_type="kl"``, :math:`\varepsilon` = ``reg``,
:math:`(\tau_1, \tau_2)` = ``reg_m``, :math:`c = a b^\top`):

.. math::
    \min_{\pi \ge 0} \langle \pi, M \rangle + \varepsilon \mathrm{KL}(\pi|a b^\top)
        + \tau_1 \mathrm{KL}(\pi \mathbf{1}|a) + \tau_2 \mathrm{KL}(\pi^\top \mathbf{1}|b).

Its dual is :math:`\max_{f,g} -\tau_1 \langle a, e^{-f/\tau_1} - 1\rangle - \tau_2 \langle b, e^{-g/\tau_2} - 1\rangle
- \varepsilon \langle a b^\top, e^{(f \oplus g - M)/\varepsilon} - 1 \rangle` and
:math:`\pi = a b^\top e^{(f \oplus g - M)/\varepsilon}`. We iterate on log-scalings
:math:`x = f/\varepsilon + \log a`, :math:`y = g/\varepsilon + \log b`, so :math:`\pi_{ij} = e^{x_i + y_j - M_{ij}/\varepsilon}`:

.. math::
    x_i \leftarrow \log a_i - \varphi_1 \operatorname{LSE}_j (y_j - M_{ij}/\varepsilon), \qquad
    y_j \leftarrow \log b_j - \varphi_2 \operatorname{LSE}_i (x_i - M_{ij}/\varepsilon), \qquad
    \varphi_k = \frac{\tau_k}{\tau_k + \varepsilon}.

From :math:`x = \log a, y = \log b` this is exactly POT's iteration (:math:`u = (a/Kv)^{\varphi_1}` with
:math:`u = e^{x - \log a}`), but it cannot underflow. Accelerations, none of which changes the fixed point:

* **translation** (translation-invariant Sinkhorn, Séjourné et al. 2022): after each sweep, the dual is
  maximised exactly along :math:`(f + \lambda, g - \lambda)`, with
  :math:`\lambda = \frac{\tau_1 \tau_2}{\tau_1 + \tau_2} \log \frac{\langle a, e^{-f/\tau_1}\rangle}{\langle b, e^{-g/\tau_2}\rangle}`;
  this removes the slow "total mass" mode when :math:`\varepsilon \ll \tau`.
* **over-relaxation** (Thibault et al. 2021): :math:`x \leftarrow (1-\omega) x + \omega\, T(y)`, with
  :math:`\omega \in [1, 1.95]` tuned from the measured rate at each check (Young's relation) and halved
  towards 1 when the error grows; 5-20x fewer iterations when :math:`\varepsilon` is small.
* **epsilon scaling** (optional) on a cold start: solve roughly for :math:`\varepsilon_0 \approx \max|M|`, halve, ...,
  carrying :math:`(f, g)` across stages.
* **warm start**: :math:`(f, g)` of the previous call (same shapes) start the next one.
* **absorbed kernel** (Schmitzer 2019): once the potentials settle, build
  :math:`\tilde K = e^{x^0 \oplus y^0 - M/\varepsilon}` once and iterate :math:`x = x^0 + s`, :math:`y = y^0 + t`
  with matrix-vector products, :math:`s = \log a - (1-\varphi_1) x^0 - \varphi_1 \log(\tilde K e^{t})`; the
  kernel is rebuilt (absorbed) whenever :math:`|s|` or :math:`|t|` grows, and any non-finite step falls back
  to the log-domain iteration.

Convergence is tested every ``check_every`` iterations (one host sync): with :math:`e_k` the largest change of
:math:`(x, y)` over the last iteration (the relative change of every row and column scaling of the plan) and
:math:`\hat\rho` the contraction rate measured between checks, a problem has converged when
:math:`e_k / (1 - \hat\rho) \le` ``tol`` (estimated distance to the fixed point), or when :math:`e_k` is at the
rounding floor of the working dtype. A batch (P, n, m) is solved jointly; converged problems leave the active
set.
"""

from __future__ import annotations

import math

import attrs
import torch

from otplug.errors import OtplugError
from otplug.errors import BatchError
from otplug.solvers.base import (
    Prepared,
    SolveResult,
    diagonal_prior_plan,
    plan_info,
    prepare,
)
from otplug.solvers.configs import SinkhornConfig

__all__ = ["AUTO_FLOAT64_RATIO", "PRECISION_LIMIT", "BalancedSinkhornSolver", "LogSinkhornSolver", "carrying_scale"]

#: with dtype "auto", float32 costs with max|M|/reg above this are solved in float64 (float32 log-potentials
#: of that size lose more than ~1e-4 relative accuracy in the plan).
AUTO_FLOAT64_RATIO = 1024.0
_EPS_STAGE_TOL = 1e-2  # per-iteration change (log units) that ends an epsilon-scaling stage
_EPS_STAGE_CHUNKS = 3  # at most this many check intervals per intermediate stage
_KERNEL_DRIFT = 30.0  # enter kernel mode when check_every * err is below this
_OMEGA_MAX = 1.95  # largest over-relaxation factor
_BACKOFF = 2.0  # back off omega when the error grew by this factor over one check interval
_ABSORB = {torch.float32: 12.0, torch.float64: 40.0}  # rebuild the kernel once |s|, |t| exceed this
#: a problem whose iteration stalls at a rounding floor (largest change of the log-scalings that rounding
#: alone explains) above this has not converged: its plan entries are only known to ~exp(+-floor)
_FLOOR_ACCEPT = 1e-2
#: ``eps_machine * max|M| / reg`` (the rounding error of every log-entry of the plan in the working dtype)
#: above which the problem cannot be solved at all: raise instead of iterating on noise
PRECISION_LIMIT = 0.1


def carrying_scale(M: torch.Tensor, reg: float, dtype: torch.dtype = torch.float64) -> float:
    """``max |M_ij|`` over the entries that can carry mass in ``dtype``: those within ``-log(tiny) * reg`` of
    their row's or their column's minimum (``tiny`` the dtype's smallest normal number: 708 reg in float64, 87
    reg in float32). Any other entry's plan value is below ``exp(-log(1/tiny))`` relative to its row's or column's
    cheapest entry, i.e. 0 in that dtype, whatever its size: an outlier entry (1e30 among costs in [0, 1), a
    corrupted frame, a sentinel) carries no mass and says nothing about the precision the plan needs."""
    with torch.no_grad():
        M3 = M.detach().reshape(-1, *M.shape[-2:]).to(torch.float64)
        reach = -math.log(torch.finfo(dtype).tiny) * reg
        near = ((M3 - M3.amin(-1, keepdim=True)) <= reach) | ((M3 - M3.amin(-2, keepdim=True)) <= reach)
        return float(torch.where(near, M3.abs(), torch.zeros_like(M3)).amax())


class _Problem:
    """Per-call constants for one epsilon stage (batched over the active problems)."""

    def __init__(self, M: torch.Tensor, loga: torch.Tensor, logb: torch.Tensor, eps: float, tau: tuple[float, float]):
        self.Me = M / eps
        self.loga, self.logb = loga, logb
        self.eps = eps
        t1, t2 = tau
        self.fi1 = t1 / (t1 + eps) if math.isfinite(t1) else 1.0
        self.fi2 = t2 / (t2 + eps) if math.isfinite(t2) else 1.0
        # translation: lambda/eps = kappa * (log A - log B), A = sum a exp(-r1 (x - log a)), r1 = eps / tau1
        self.r1 = eps / t1 if math.isfinite(t1) else 0.0
        self.r2 = eps / t2 if math.isfinite(t2) else 0.0
        if math.isfinite(t1) and math.isfinite(t2):
            self.kappa = (t1 * t2 / (t1 + t2)) / eps
        elif math.isfinite(t1):
            self.kappa = t1 / eps
        elif math.isfinite(t2):
            self.kappa = t2 / eps
        else:
            self.kappa = 0.0  # balanced: the translation changes nothing

    def subset(self, idx: torch.Tensor) -> _Problem:
        out = object.__new__(_Problem)
        out.__dict__.update(self.__dict__)
        out.Me, out.loga, out.logb = self.Me[idx], self.loga[idx], self.logb[idx]
        return out

    def translate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact dual ascent along (f + lambda, g - lambda); returns the shifted (x, y)."""
        if self.kappa == 0.0:
            return x, y
        la = torch.logsumexp(self.loga - self.r1 * (x - self.loga), dim=-1, keepdim=True)
        lb = torch.logsumexp(self.logb - self.r2 * (y - self.logb), dim=-1, keepdim=True)
        lam = self.kappa * (la - lb)
        return x + lam, y - lam

    def log_sweep(
        self, x: torch.Tensor, y: torch.Tensor, translation: bool, omega: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xn = self.loga - self.fi1 * torch.logsumexp(y.unsqueeze(-2) - self.Me, dim=-1)
        x = xn if omega == 1.0 else torch.lerp(x, xn, omega)
        yn = self.logb - self.fi2 * torch.logsumexp(x.unsqueeze(-1) - self.Me, dim=-2)
        y = yn if omega == 1.0 else torch.lerp(y, yn, omega)
        if translation:
            x, y = self.translate(x, y)
        return x, y


class LogSinkhornSolver:
    """The default solver ``sinkhorn`` (see the module docstring for the problem and the algorithm).

    Keeps the last dual potentials for warm starts; ``reset()`` forgets them, and they are dropped
    automatically when the cost's shape, device or the batch size changes.
    """

    def __init__(self, config: SinkhornConfig | None = None) -> None:
        self.config = config if config is not None else SinkhornConfig()
        self._warm: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def reset(self) -> None:
        """Forget the warm-start potentials."""
        self._warm = None

    # ------------------------------------------------------------------ helpers
    def _work_dtype(self, M: torch.Tensor, reg: float) -> torch.dtype:
        d = self.config.dtype
        if d == "float64" or M.dtype == torch.float64:
            return torch.float64 if d != "float32" else torch.float32
        if d == "float32":
            return torch.float32
        if not bool(torch.isfinite(M).all()):
            return torch.float32  # prepare() reports it
        big = carrying_scale(M, reg) / reg if M.numel() else 0.0
        return torch.float64 if big > AUTO_FLOAT64_RATIO else torch.float32

    def _check_precision(self, p: Prepared) -> float:
        """``eps_machine * max|M| / reg`` over the entries that can carry mass (:func:`carrying_scale`): the
        rounding error of the plan's log-entries in the working dtype.

        The dual potentials are of the size of the costs that carry mass, so each exponent
        ``(f_i + g_j - M_ij) / reg`` of such an entry is a difference of numbers of that size over ``reg``; above
        :data:`PRECISION_LIMIT` the plan is rounding noise (and ``tau / (tau + reg)`` rounds to 1), so no iteration
        can solve the problem: raise. Entries that cannot carry mass (an outlier far above its row and column
        minima) get ``exp(-huge) = 0`` exactly and do not count.
        """
        finfo = torch.finfo(p.M.dtype)
        mmax = carrying_scale(p.M, p.reg, p.M.dtype)
        rounding = finfo.eps * mmax / p.reg
        if rounding > PRECISION_LIMIT:
            if p.M.dtype == torch.float64:
                fix = "use a larger reg or normalise the cost (cost_normalization = 'mean')"
            else:
                fix = "use solver_options.dtype = 'auto' or 'float64', a larger reg, or normalise the cost"
            raise OtplugError(
                f"reg = {p.reg:.3g} is too small for this cost: max|M| / reg = {mmax / p.reg:.3g}, so in "
                f"{str(p.M.dtype).removeprefix('torch.')} every plan entry exp((f_i + g_j - M_ij) / reg) is rounding "
                f"noise (log error ~{rounding:.2g}); {fix} (reg >= {mmax * finfo.eps / (PRECISION_LIMIT / 100):.2g} "
                "for this cost scale)"
            )
        return rounding

    # ------------------------------------------------------------------ API
    def solve(
        self,
        M: torch.Tensor,
        *,
        reg: float,
        reg_m: tuple[float, float],
        heuristic: bool = False,
        a: torch.Tensor | None = None,
        b: torch.Tensor | None = None,
    ) -> SolveResult:
        """Solve one (n, m) or P batched (P, n, m) problems; returns the plan in M's dtype and shape."""
        out_dtype = M.dtype if M.dtype in (torch.float32, torch.float64) else torch.float32
        work = self._work_dtype(M, float(reg)) if isinstance(M, torch.Tensor) and M.numel() else None
        p = prepare(M, reg, reg_m, a, b, heuristic, dtype=work)
        if heuristic:
            plan = diagonal_prior_plan(p)
            info = plan_info(plan, p)
            info.update(closed_form=1.0, warm_started=0.0, eps_stages=0.0, float64=float(p.M.dtype == torch.float64))
            plan = plan.to(out_dtype)
            return SolveResult(plan=plan if p.batched else plan[0], iterations=0, converged=True, error=0.0, info=info)
        rounding = self._check_precision(p)
        with torch.no_grad():
            plan, iters, conv, err, info = self._solve(p)
        info.update(plan_info(plan, p))
        info["log_rounding"] = rounding
        plan = plan.to(out_dtype)
        if not bool(torch.isfinite(plan).all()):  # unconverged potentials of size max|M|/reg: exp() overflowed
            # (in the working dtype, or when a float64 plan is returned in the cost's float32)
            mmax = carrying_scale(p.M, p.reg, p.M.dtype)
            raise OtplugError(
                f"reg = {p.reg:.3g} is too small for this cost: after {iters} iterations the plan overflowed "
                f"(max|M| / reg = {mmax / p.reg:.3g}, tau = {p.tau[0]:.3g}/{p.tau[1]:.3g}); use a larger reg (the "
                "iteration contracts at rate ~tau/(tau + reg) per sweep) or normalise the cost "
                "(cost_normalization = 'mean')")
        return SolveResult(plan=plan if p.batched else plan[0], iterations=iters, converged=conv, error=err, info=info)

    # ------------------------------------------------------------------ core
    def _solve(self, p: Prepared) -> tuple[torch.Tensor, int, bool, float, dict[str, float]]:
        cfg = self.config
        M, eps = p.M, p.reg
        P, n, m = M.shape
        dt = M.dtype
        loga, logb = torch.log(p.a), torch.log(p.b)
        key = (tuple(M.shape), M.device, dt)

        # initial dual potentials (cost units): warm start or zero (= POT's u = v = 1)
        warm = cfg.warm_start and self._warm is not None and self._warm[0] == key
        if warm:
            f, g = self._warm[1].clone(), self._warm[2].clone()
        else:
            f, g = torch.zeros(P, n, dtype=dt, device=M.device), torch.zeros(P, m, dtype=dt, device=M.device)
        # epsilon schedule: only on a cold start
        stages = _eps_schedule(M, p.batched, eps, cfg.eps_scaling_factor) if cfg.eps_scaling and not warm else [eps]

        run = _Run(iters=torch.zeros(P, dtype=torch.long))
        for si, e in enumerate(stages):
            final = si == len(stages) - 1
            prob = _Problem(M, loga, logb, e, p.tau)
            x, y = f / e + loga, g / e + logb
            conv, stalled, errs = self._stage(prob, x, y, final, run)  # updates x, y in place
            f, g = (x - loga) * e, (y - logb) * e
        plan = torch.exp(x.unsqueeze(-1) + y.unsqueeze(-2) - prob.Me)

        if cfg.warm_start:
            self._warm = (key, f.detach().clone(), g.detach().clone())
        info = {
            "warm_started": float(warm),
            "eps_stages": float(len(stages) - 1),
            "float64": float(dt == torch.float64),
            "iterations_min": float(run.iters.min()),
            "converged_fraction": float(conv.double().mean()),
            "precision_stalled": float(bool(stalled.any())),
            **{k_: float(v) for k_, v in run.stats.items()},
        }
        return plan, int(run.iters.max()), bool(conv.all()), float(errs.max()), info

    def _stage(
        self, prob: _Problem, x: torch.Tensor, y: torch.Tensor, final: bool, run: _Run
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Iterate one epsilon stage from (x, y) (written back in place) until every problem is done or the
        iteration budget is spent; returns per problem (converged, stalled at a rounding floor, error)."""
        cfg = self.config
        P = x.shape[0]
        finfo = torch.finfo(x.dtype)
        active = torch.arange(P, device=x.device)
        sub = prob
        prev_err = torch.full((P,), float("inf"), dtype=torch.float64)
        conv = torch.zeros(P, dtype=torch.bool)
        stalled = torch.zeros(P, dtype=torch.bool)
        errs = torch.full((P,), float("inf"), dtype=torch.float64)
        chunks = 0
        kernel_ok = cfg.kernel_iterations
        kern = None  # (K, x0, y0, ax, ay) for the active subset
        xa, ya = x, y
        last_step = float("inf")
        omega = 1.0
        while (budget := cfg.max_iter - run.total_iters) > 0:
            # short first chunks (2, 4, 8, then check_every): fast-contracting problems (small tau) stop
            # after a few iterations instead of two full chunks; a few extra host syncs at most
            steps = min(cfg.check_every, budget, 2 << chunks)
            x_chk, y_chk = xa, ya
            if kernel_ok and final and last_step * steps < _KERNEL_DRIFT:
                if kern is None:
                    kern = _build_kernel(sub, xa, ya)
                    run.stats["absorptions"] += 1
                xa, ya, px, py, s_max = _kernel_chunk(sub, kern, xa, ya, steps, cfg.translation, omega)
                if not _finite(xa, ya):  # fall back to the log domain from the last check, without over-relaxation
                    run.stats["fallbacks"] += 1
                    kernel_ok, kern, omega = False, None, 1.0
                    xa, ya = x_chk, y_chk
                    continue
                run.stats["kernel_iterations"] += steps
                if s_max > _ABSORB[x.dtype]:
                    kern = None
            else:
                kern = None
                xa, ya, px, py = _log_chunk(sub, xa, ya, steps, cfg.translation, omega)
                if not _finite(xa, ya):
                    if omega == 1.0:
                        raise FloatingPointError("log-domain Sinkhorn produced non-finite potentials")
                    run.stats["fallbacks"] += 1  # an over-relaxed step went too far: redo without it
                    omega, xa, ya = 1.0, x_chk, y_chk
                    continue
                run.stats["log_iterations"] += steps
            run.total_iters += steps
            chunks += 1
            act = active.cpu()
            run.iters[act] += steps
            # per-problem error of the last iteration, and convergence test (the one host sync)
            step = torch.maximum((xa - px).abs().amax(-1), (ya - py).abs().amax(-1)).to(torch.float64).cpu()
            scale = torch.maximum(xa.abs().amax(-1), ya.abs().amax(-1)).to(torch.float64).cpu()
            pe = prev_err[act]
            ratio, dist, done, stall = _check(step, scale, pe, steps, final, chunks, finfo.eps, cfg.tol)
            stalled[act] |= stall
            if final and cfg.overrelaxation and chunks >= 2:
                omega = _tuned_omega(omega, ratio[torch.isfinite(pe) & ~done & (ratio > 0)], steps)
                run.stats["omega"] = omega
            prev_err[act] = step
            errs[act] = torch.where(torch.isfinite(dist), dist, step)
            last_step = float(step.max())
            x[active], y[active] = xa, ya
            if bool(done.all()):
                conv[act] = ~stalled[act]
                break
            if bool(done.any()):
                conv[act[done]] = ~stalled[act[done]]
                keep = (~done).to(active.device)
                active = active[keep]
                sub = prob.subset(active)
                xa, ya = xa[keep], ya[keep]
                kern = _subset_kernel(kern, keep)
                last_step = float(step[~done].max())
        return conv, stalled, errs


class BalancedSinkhornSolver(LogSinkhornSolver):
    """``sinkhorn-balanced``: the same log-domain / absorbed-kernel iteration with both marginals exact
    (:math:`\varphi_1 = \varphi_2 = 1`, the ``tau = inf`` limit): balanced entropic OT, the plan of POT's
    ``ot.sinkhorn(a, b, M, reg)`` (``otplug.solvers.problems``). Warm start, over-relaxation, the absorbed
    kernel, the precision check and the closed-form diagonal prior (``pi = diag(a)``) are shared; the
    translation step is a no-op here (the total mass is fixed)."""

    def solve(
        self,
        M: torch.Tensor,
        *,
        reg: float,
        reg_m: tuple[float, float] = (math.inf, math.inf),
        heuristic: bool = False,
        a: torch.Tensor | None = None,
        b: torch.Tensor | None = None,
    ) -> SolveResult:
        """Solve the balanced problem; ``reg_m`` must be ``(inf, inf)`` (what ``OTLoss`` passes for
        ``marginals = "exact"``): a finite tau asks for another problem, an error. ``a`` and ``b`` must have
        equal masses."""
        _require_exact(reg_m, "sinkhorn-balanced")
        _require_equal_masses(M, a, b)
        return super().solve(M, reg=reg, reg_m=(math.inf, math.inf), heuristic=heuristic, a=a, b=b)


def _require_exact(reg_m: object, who: str) -> None:
    pair = reg_m if isinstance(reg_m, (tuple, list)) else (reg_m, reg_m)
    if not all(isinstance(t, (int, float)) and math.isinf(t) and t > 0 for t in pair):
        raise OtplugError(f"{who} solves balanced OT (exact marginals): reg_m must be (inf, inf), got {reg_m!r}; "
                          "for relaxed marginals use a KL-unbalanced solver (sinkhorn, pot)")


def _require_equal_masses(M: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
    if a is None and b is None:
        return
    ma = float(torch.as_tensor(a).sum(-1).max()) if a is not None else 1.0
    mb = float(torch.as_tensor(b).sum(-1).max()) if b is not None else 1.0
    if abs(ma - mb) > 1e-6 * max(ma, mb):
        raise BatchError(f"balanced OT needs marginals of equal mass, got sum(a) = {ma:.6g}, sum(b) = {mb:.6g}")


@attrs.define
class _Run:
    """What one solve carries across its epsilon stages: iterations per problem, in all, and the counters."""

    iters: torch.Tensor
    total_iters: int = 0
    stats: dict[str, float] = attrs.field(factory=lambda: {
        "absorptions": 0, "kernel_iterations": 0, "log_iterations": 0, "fallbacks": 0, "omega": 1.0})


def _eps_schedule(M: torch.Tensor, batched: bool, eps: float, factor: float) -> list[float]:
    """Epsilon scaling: from the cost's range (the largest over a batch) down by ``factor`` to ``eps``."""
    e = float(M.amax() - M.amin()) if not batched else float((M.amax((1, 2)) - M.amin((1, 2))).max())
    sched = []
    while e > eps * (1.0 / factor):
        sched.append(e)
        e *= factor
    return sched + [eps]


def _finite(x: torch.Tensor, y: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all() & torch.isfinite(y).all())


def _check(
    step: torch.Tensor, scale: torch.Tensor, pe: torch.Tensor, steps: int, final: bool, chunks: int,
    eps_machine: float, tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The convergence test of one check (per active problem, on the host): the measured contraction rate,
    the estimated distance to the fixed point, which problems are done, and which stalled at a rounding floor
    without converging."""
    ratio = torch.where(pe > 0, (step / pe).clamp(min=0.0) ** (1.0 / steps), torch.zeros_like(step))
    ratio = torch.where(torch.isnan(ratio), torch.ones_like(ratio), ratio)
    rho = ratio.clamp(max=1.0)
    dist = torch.where(rho < 1.0, step / (1.0 - rho).clamp(min=1e-12), torch.full_like(step, float("inf")))
    floor = 16.0 * eps_machine * (1.0 + scale)
    if not final:
        done = (step <= _EPS_STAGE_TOL) | (step <= floor) | torch.tensor(chunks >= _EPS_STAGE_CHUNKS)
        return ratio, dist, done.expand_as(step).clone(), torch.zeros_like(step, dtype=torch.bool)
    # At the rounding floor the iteration cannot improve, but that only means "converged" when the floor itself
    # is small: the plan's log-entries x_i + y_j - M_ij/reg carry an absolute rounding error of about the floor,
    # and with |x| ~ max|M|/reg huge (tiny reg) every iterate is "at the floor" while the plan is noise. Such
    # problems stop, unconverged.
    at_floor = step <= floor
    good = (torch.isfinite(pe) & (dist <= tol)) | (at_floor & (floor <= _FLOOR_ACCEPT))
    return ratio, dist, good | at_floor, at_floor & ~good


def _tuned_omega(omega: float, rates: torch.Tensor, steps: int) -> float:
    """Over-relaxation: infer the plain Sinkhorn rate rho from the measured rate r at the current omega (Young's
    relation (r + omega - 1)^2 = r omega^2 rho) and move omega towards 2 / (1 + sqrt(1 - rho)); back off when the
    error clearly grows. ``rates``: the measured per-iteration rates of the problems still iterating."""
    if not rates.numel():
        return omega
    r = float(rates.max())
    if omega > 1.0 and r > _BACKOFF ** (1.0 / steps):
        return 1.0 + 0.75 * (omega - 1.0)
    if r < 1.0:
        rho_plain = min((r + omega - 1.0) ** 2 / (r * omega * omega), 1.0)
        return max(omega, min(2.0 / (1.0 + math.sqrt(1.0 - rho_plain)), _OMEGA_MAX))
    return omega


def _log_chunk(prob: _Problem, x: torch.Tensor, y: torch.Tensor, steps: int, translation: bool, omega: float):
    """``steps`` log-domain sweeps; returns the new (x, y) and the previous iterate."""
    px, py = x, y
    for it in range(steps):
        if it == steps - 1:
            px, py = x, y
        x, y = prob.log_sweep(x, y, translation, omega)
    return x, y, px, py


def _build_kernel(prob: _Problem, x: torch.Tensor, y: torch.Tensor):
    K = torch.exp(x.unsqueeze(-1) + y.unsqueeze(-2) - prob.Me)
    ax = prob.loga - (1.0 - prob.fi1) * x
    ay = prob.logb - (1.0 - prob.fi2) * y
    return K, x, y, ax, ay


def _subset_kernel(kern, keep: torch.Tensor):
    if kern is None:
        return None
    return tuple(t[keep] for t in kern)


def _kernel_chunk(
    prob: _Problem, kern, x: torch.Tensor, y: torch.Tensor, steps: int, translation: bool, omega: float = 1.0
):
    """``steps`` sweeps with the absorbed kernel; returns new (x, y), the previous iterate and max |s|, |t|."""
    K, x0, y0, ax, ay = kern
    s, t = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    ax, ay = ax.unsqueeze(-1), ay.unsqueeze(-1)
    KT = K.transpose(-2, -1)
    fi1, fi2 = prob.fi1, prob.fi2
    ps, pt = s, t
    for it in range(steps):
        if it == steps - 1:
            ps, pt = s, t
        sn = torch.add(ax, torch.log(torch.bmm(K, torch.exp(t))), alpha=-fi1)
        s = sn if omega == 1.0 else torch.lerp(s, sn, omega)
        tn = torch.add(ay, torch.log(torch.bmm(KT, torch.exp(s))), alpha=-fi2)
        t = tn if omega == 1.0 else torch.lerp(t, tn, omega)
        if translation and prob.kappa != 0.0:
            xs, ys = prob.translate((x0.unsqueeze(-1) + s).squeeze(-1), (y0.unsqueeze(-1) + t).squeeze(-1))
            s, t = (xs - x0).unsqueeze(-1), (ys - y0).unsqueeze(-1)
    x, y = x0 + s.squeeze(-1), y0 + t.squeeze(-1)
    px, py = x0 + ps.squeeze(-1), y0 + pt.squeeze(-1)
    s_max = float(torch.maximum(s.abs().max(), t.abs().max()))
    return x, y, px, py, s_max
