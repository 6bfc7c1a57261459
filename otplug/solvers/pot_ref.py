r"""Reference solvers: POT's ``ot.unbalanced.sinkhorn_knopp_unbalanced`` called exactly as the seed did.

``pot`` runs it on float64 NumPy (the earlier reference path; results equal that call's), ``pot-torch`` on
torch tensors on the cost's device through POT's torch backend (in the cost's dtype, half precision promoted
to float32). Both solve

.. math::
    \min_{\pi \ge 0} \langle \pi, M \rangle + \varepsilon \mathrm{KL}(\pi|c)
        + \tau_1 \mathrm{KL}(\pi \mathbf{1}|a) + \tau_2 \mathrm{KL}(\pi^\top \mathbf{1}|b)

with the plain scaling iteration :math:`u = (a / K v)^{\tau_1/(\tau_1+\varepsilon)}`,
:math:`v = (b / K^\top u)^{\tau_2/(\tau_2+\varepsilon)}`, :math:`K = e^{-M/\varepsilon} \odot c`. When
:math:`e^{-M/\varepsilon}` underflows, POT stops at iteration 0 and returns an all-zero plan; these solvers
report that as ``info["collapsed"] = 1`` rather than hiding it. A batch (P, n, m) is solved one problem at a
time.

``pot-balanced`` is the reference of balanced OT (``marginals = "exact"``): POT's ``ot.sinkhorn(a, b, M, reg)``
on float64 NumPy, :math:`\min_{\pi 1 = a, \pi^\top 1 = b} \langle \pi, M\rangle - \varepsilon H(\pi)`
(``method = "sinkhorn"``, POT's default kernel iteration, or ``"sinkhorn_log"``); with the diagonal prior the
plan is ``diag(a)`` in closed form (``ot.sinkhorn`` takes no reference measure).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import torch

from otplug.errors import OtplugError
from otplug.solvers.base import Prepared, SolveResult, diagonal_prior_plan, plan_info, prepare
from otplug.solvers.configs import PotBalancedConfig, PotConfig

__all__ = ["MIN_POT_VERSION", "PotBalancedSolver", "PotSolver", "PotTorchSolver", "require_pot"]

MIN_POT_VERSION = (0, 9, 5)


def require_pot() -> Any:
    """Import POT and check its version (>= 0.9.5: ``reg_type="kl"`` semantics)."""
    try:
        import ot  # noqa: PLC0415
        import ot.unbalanced  # noqa: F401, PLC0415
    except ImportError as exc:  # pragma: no cover - POT is a dependency
        raise OtplugError(f"the 'pot' solvers need POT >= 0.9.5 (pip install 'pot>=0.9.5'): {exc}") from exc
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", getattr(ot, "__version__", ""))
    version = tuple(int(x or 0) for x in match.groups()) if match else (0, 0, 0)
    if version < MIN_POT_VERSION:
        raise OtplugError(
            f"POT {ot.__version__} is too old: otplug needs POT >= 0.9.5 (reg_type='kl' semantics; "
            "0.9.4 solved a different problem); pip install -U 'pot>=0.9.5'"
        )
    return ot


class _PotBase:
    def __init__(self, config: PotConfig | None = None) -> None:
        self.config = config if config is not None else PotConfig()
        self._ot = require_pot()

    def reset(self) -> None:
        """Nothing to reset: the reference solvers keep no state between calls."""

    def _arrays(self, p: Prepared, i: int, c: torch.Tensor | None) -> tuple[Any, Any, Any, Any]:
        raise NotImplementedError

    def _to_tensor(self, plan: Any, M: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _dtype(self, M: torch.Tensor) -> torch.dtype:
        raise NotImplementedError

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
        """Solve each problem with POT; ``error`` is POT's last ``err`` (relative change of the scalings)."""
        p = prepare(M, reg, reg_m, a, b, heuristic, dtype=self._dtype(M))
        n = p.M.shape[-2]
        c = torch.eye(n, dtype=p.M.dtype, device=p.M.device) / n if heuristic else None
        plans, iters, errs, conv, numerr = [], [], [], [], 0
        for i in range(p.M.shape[0]):
            a_i, b_i, M_i, c_i = self._arrays(p, i, c)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                plan, log = self._ot.unbalanced.sinkhorn_knopp_unbalanced(
                    a_i, b_i, M_i, p.reg, reg_m=p.tau, reg_type="kl", c=c_i,
                    numItermax=self.config.max_iter, stopThr=self.config.tol, log=True,
                )
            hit_numerr = any("Numerical errors" in str(w.message) for w in caught)
            numerr += int(hit_numerr)
            err_list = [float(e) for e in log["err"]]
            err = err_list[-1] if err_list else float("inf")
            plans.append(self._to_tensor(plan, M))
            iters.append(len(err_list))
            errs.append(err)
            conv.append(bool(err < self.config.tol) and not hit_numerr)
        plan_t = torch.stack(plans)
        info = plan_info(plan_t, p)
        masses = plan_t.sum(dim=(-2, -1))
        info["collapsed"] = float(bool((masses == 0).any()) or numerr > 0)
        info["numerical_errors"] = float(numerr)
        info["iterations_min"] = float(min(iters))
        return SolveResult(
            plan=plan_t if p.batched else plan_t[0],
            iterations=max(iters),
            converged=all(conv),
            error=max(errs),
            info=info,
        )


class PotSolver(_PotBase):
    """``pot``: POT on float64 NumPy, exactly the seed's call (plan returned as float64 on M's device)."""

    def _dtype(self, M: torch.Tensor) -> torch.dtype:
        return torch.float64

    def _arrays(self, p: Prepared, i: int, c: torch.Tensor | None) -> tuple[Any, Any, Any, Any]:
        def np64(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy().astype(np.float64)

        return np64(p.a[i]), np64(p.b[i]), np64(p.M[i]), (np64(c) if c is not None else None)

    def _to_tensor(self, plan: Any, M: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(plan, dtype=np.float64)).to(M.device)


class PotTorchSolver(_PotBase):
    """``pot-torch``: the same POT function on torch tensors on M's device, in M's dtype."""

    def _dtype(self, M: torch.Tensor) -> torch.dtype:
        return M.dtype if M.dtype in (torch.float32, torch.float64) else torch.float32

    def _arrays(self, p: Prepared, i: int, c: torch.Tensor | None) -> tuple[Any, Any, Any, Any]:
        return p.a[i].contiguous(), p.b[i].contiguous(), p.M[i].contiguous(), c

    def _to_tensor(self, plan: Any, M: torch.Tensor) -> torch.Tensor:
        return plan.detach()


class PotBalancedSolver:
    """``pot-balanced``: POT's ``ot.sinkhorn`` on float64 NumPy (balanced OT, the reference path of
    ``sinkhorn-balanced``); ``error`` is POT's last ``err`` (the marginal violation it stops on)."""

    def __init__(self, config: PotBalancedConfig | None = None) -> None:
        self.config = config if config is not None else PotBalancedConfig()
        self._ot = require_pot()

    def reset(self) -> None:
        """Nothing to reset: the reference solvers keep no state between calls."""

    def solve(
        self,
        M: torch.Tensor,
        *,
        reg: float,
        reg_m: tuple[float, float] = (float("inf"), float("inf")),
        heuristic: bool = False,
        a: torch.Tensor | None = None,
        b: torch.Tensor | None = None,
    ) -> SolveResult:
        """Solve each problem with ``ot.sinkhorn``; the plan is float64 on M's device."""
        from otplug.solvers.sinkhorn import _require_equal_masses, _require_exact  # noqa: PLC0415

        _require_exact(reg_m, "pot-balanced")
        _require_equal_masses(M, a, b)
        p = prepare(M, reg, (float("inf"), float("inf")), a, b, heuristic, dtype=torch.float64)
        if heuristic:
            plan = diagonal_prior_plan(p)
            info = plan_info(plan, p)
            info["closed_form"] = 1.0
            return SolveResult(plan=(plan if p.batched else plan[0]).to(M.device), iterations=0, converged=True,
                               error=0.0, info=info)
        cfg = self.config
        plans, iters, errs, conv, numerr = [], [], [], [], 0
        for i in range(p.M.shape[0]):
            a_i, b_i, M_i = (t.detach().cpu().numpy().astype(np.float64) for t in (p.a[i], p.b[i], p.M[i]))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                plan, log = self._ot.sinkhorn(a_i, b_i, M_i, p.reg, method=cfg.method, numItermax=cfg.max_iter,
                                              stopThr=cfg.tol, log=True)
            bad = any("umerical errors" in str(w.message) for w in caught) or not np.isfinite(plan).all()
            numerr += int(bad)
            err_list = [float(e) for e in log.get("err", [])]
            err = err_list[-1] if err_list else float("inf")
            plans.append(torch.from_numpy(np.asarray(plan, dtype=np.float64)).to(M.device))
            iters.append(int(log.get("niter", len(err_list))))
            errs.append(err)
            conv.append(bool(err < cfg.tol) and not bad)
        plan_t = torch.stack(plans)
        info = plan_info(plan_t, p)
        info["collapsed"] = float(bool((plan_t.sum(dim=(-2, -1)) == 0).any()) or numerr > 0)
        info["numerical_errors"] = float(numerr)
        return SolveResult(plan=plan_t if p.batched else plan_t[0], iterations=max(iters), converged=all(conv),
                           error=max(errs), info=info)
