"""The OT loss: ``ot_loss = sum_ij pi_ij * M_ij`` with pi an unbalanced Sinkhorn plan of ``M.detach()``
(steps 4-5 of features -> terms -> M -> solver -> loss -> sinks).

    cfg = otplug.load_config("ot.toml")
    ot = otplug.OTLoss(cfg)
    res = ot(src_batch, tgt_batch, encoder=policy)
    total = bc_loss + lambda_ot * res.loss

pi is a constant for autograd, so ``d ot_loss / d M = pi``. A collapsed plan (mass ~0 or non-finite) is
never silent: ``ot_collapsed`` is 1 in the metrics, a rate-limited warning says why, and what happens next
is the config's explicit ``on_collapse`` (``warn`` keeps the plan, ``raise`` stops, ``uniform`` replaces it
by the independent coupling a b^T and sets ``ot_fallback``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from otplug.cost import BoundTerm, compose_cost
from otplug.policy_encoder import resolve_encoder
from otplug.errors import OtplugError
from otplug.plugins import get_registry

__all__ = ["OTCollapseWarning", "OTLoss", "OTResult", "OTSolverWarning"]


COLLAPSE_MASS = 1e-6  # plan mass below this is treated as a collapse


class OTCollapseWarning(RuntimeWarning):
    """The transport plan has (almost) no mass, so the OT loss trains nothing."""


class OTSolverWarning(RuntimeWarning):
    """The solver stopped at its iteration cap: the plan is approximate."""


@attrs.frozen
class OTResult:
    loss: torch.Tensor
    plan: torch.Tensor
    cost: torch.Tensor
    metrics: dict[str, float]
    term_costs: dict[str, torch.Tensor] = attrs.field(factory=dict, repr=False)


class _RateLimiter:
    """True on the 1st, 10th, 100th, 1000th... event."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> bool:
        self.count += 1
        return math.log10(self.count).is_integer()


class OTLoss:
    """Composes the configured terms into M, solves for the plan and returns the loss with metrics.

    Keeps solver state (warm-start potentials) between calls, so make one per training run.
    """

    def __init__(self, config: Any) -> None:
        from otplug.config import load_config

        self.config = load_config(config)
        registry = get_registry()
        default_reducer = self.config.time_reduce
        self.terms: list[BoundTerm] = []
        for i, spec in enumerate(self.config.terms):
            term = registry.get("term", spec.type, field=f"terms[{i}].type")
            reducer_name = spec.time_reduce or default_reducer
            reducer = registry.get("reducer", reducer_name, field=f"terms[{i}].time_reduce").load()
            impl = term.load()(spec.options)
            self.terms.append(BoundTerm(spec.name, spec.type, float(spec.weight), impl, reducer, reducer_name))
        solver = registry.get("solver", self.config.solver, field="solver")
        options = self.config.solver_options
        if options is None:
            cls = solver.load_config_cls()
            options = cls() if cls is not None else None
        self.solver = solver.load()(options)
        self._collapse_warn = _RateLimiter()
        self._cap_warn = _RateLimiter()
        self._encoders: dict[int, Any] = {}

    # -- introspection -----------------------------------------------------------------------------------
    def required_keys(self, side: str) -> set[str]:
        """Batch keys one side (``"src"`` or ``"tgt"``) must carry."""
        if side not in ("src", "tgt"):
            raise ValueError(f"side must be 'src' or 'tgt', got {side!r}")
        keys: set[str] = set()
        for term in self.terms:
            keys |= self._term_keys(term, side)
        return keys

    def optional_keys(self, side: str) -> set[str]:
        """Keys a side may carry and terms then use: ``<key>_is_pad`` masks of the required keys and any
        term-declared ``optional_keys(side)`` (e.g. a custom ``pad_key``)."""
        keys = {f"{k}_is_pad" for k in self.required_keys(side)}
        for term in self.terms:
            fn = getattr(term.impl, "optional_keys", None)
            if fn is not None:
                keys |= set(fn(side))
        return keys

    def raw_keys(self, side: str) -> set[str]:
        """Keys whose raw values some term reads (label costs). Terms without a ``raw_keys`` method are
        assumed to read all their keys."""
        keys: set[str] = set()
        for term in self.terms:
            fn = getattr(term.impl, "raw_keys", None)
            keys |= set(fn(side)) if fn is not None else self._term_keys(term, side)
        return keys

    @staticmethod
    def _term_keys(term: BoundTerm, side: str) -> set[str]:
        fn = getattr(term.impl, "required_keys", None)
        if fn is not None:
            return set(fn(side))
        opts = getattr(term.impl, "config", None)
        key = getattr(opts, "src_key", None)
        if side == "tgt":
            key = getattr(opts, "target_key", None) or getattr(opts, "tgt_key", None) or key
        return {key} if isinstance(key, str) and key else set()

    @property
    def embedding_keys(self) -> set[str]:
        """Keys whose features come from the policy's encoder."""
        keys: set[str] = set()
        for term in self.terms:
            fn = getattr(term.impl, "embedding_keys", None)
            if fn is not None:
                keys |= set(fn())
        return keys

    def reset(self) -> None:
        """Forget warm-start state (e.g. after loading a checkpoint with different batch shapes)."""
        reset = getattr(self.solver, "reset", None)
        if reset is not None:
            reset()

    # -- the loss ----------------------------------------------------------------------------------------
    def _encoder(self, encoder: Any) -> Any:
        if encoder is None:
            return None
        key = id(encoder)
        if key not in self._encoders:
            self._encoders = {key: resolve_encoder(encoder)}  # one policy per run; don't grow
        return self._encoders[key]

    def __call__(self, src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor], encoder: Any = None) -> OTResult:
        cfg = self.config
        breakdown = compose_cost(self.terms, src, tgt, self._encoder(encoder) if self.embedding_keys else encoder)
        M = breakdown.matrix
        metrics: dict[str, float] = dict(breakdown.stats)
        if cfg.cost_normalization != "none":
            with torch.no_grad():
                scale = M.detach().mean() if cfg.cost_normalization == "mean" else M.detach().max()
                scale = float(scale) if float(scale) > 0 else 1.0
            M = M / scale
            metrics["ot_cost_scale"] = scale
        return self.from_cost(M, breakdown.terms, metrics)

    def from_cost(self, M: torch.Tensor, term_costs: Mapping[str, torch.Tensor] | None = None,
                  metrics: dict[str, float] | None = None) -> OTResult:
        """Solve and build the loss from an already composed cost matrix (used by distributed scopes)."""
        cfg = self.config
        metrics = dict(metrics or {})
        n, m = M.shape
        Md = M.detach()
        result = self.solver.solve(Md, reg=cfg.reg, reg_m=(cfg.tau_src, cfg.tau_tgt), heuristic=cfg.heuristic)
        plan = result.plan.to(device=M.device, dtype=M.dtype)
        mass = float(plan.sum()) if bool(torch.isfinite(plan).all()) else float("nan")
        collapsed = not math.isfinite(mass) or mass < COLLAPSE_MASS
        fallback = False
        if collapsed:
            plan, fallback = self._on_collapse(plan, Md, mass)
        loss = (plan * M).sum()
        metrics.update({
            "ot_loss": float(loss.detach()),
            "ot_pi_sum": float(plan.sum()),
            "ot_headroom": float(Md.min()) / cfg.reg,
            "ot_collapsed": float(collapsed),
            "ot_fallback": float(fallback),
            "ot_solver/iterations": float(result.iterations),
            "ot_solver/converged": float(bool(result.converged)),
            "ot_solver/error": float(result.error),
        })
        for k, v in (result.info or {}).items():
            metrics[f"ot_solver/{k}"] = float(v)
        if n == m:
            metrics["ot_pi_diag"] = float(torch.diagonal(plan).sum())
        for name, mt in (term_costs or {}).items():
            metrics[f"ot_cost/{name}"] = float(mt.detach().mean())
        if not result.converged and not collapsed and self._cap_warn():
            warnings.warn(
                f"OT solver {cfg.solver!r} stopped at its iteration cap ({result.iterations} iterations, marginal "
                f"error {result.error:.3g}); the plan is approximate (ot_solver/converged = 0). Raise "
                "solver_options.max_iter, or reg / tau_src / tau_tgt, or set cost_normalization.",
                OTSolverWarning, stacklevel=3)
        return OTResult(loss=loss, plan=plan.detach(), cost=M, metrics=metrics, term_costs=dict(term_costs or {}))

    def _on_collapse(self, plan: torch.Tensor, M: torch.Tensor, mass: float) -> tuple[torch.Tensor, bool]:
        cfg = self.config
        headroom = float(M.min()) / cfg.reg
        why = (
            f"OT plan collapsed (plan mass {mass:.3g} with solver {cfg.solver!r}; min(M)/reg = {headroom:.3g}). "
            "The OT loss is ~0 and trains nothing. "
        )
        if cfg.solver in ("pot", "pot-torch") and headroom > 50:
            why += "exp(-M/reg) underflows in POT: use solver = 'sinkhorn' (log-domain). "
        why += ("If the true plan is empty, costs dwarf reg and tau: set cost_normalization = 'mean' or raise "
                "reg / tau_src / tau_tgt.")
        if cfg.on_collapse == "raise":
            raise OtplugError(why + " (on_collapse = 'raise')")
        if cfg.on_collapse == "uniform":
            n, m = M.shape
            uniform = torch.full_like(plan, 1.0 / (n * m))
            if self._collapse_warn():
                warnings.warn(why + " Using the uniform coupling instead (on_collapse = 'uniform'; "
                              "ot_fallback = 1 in the metrics).", OTCollapseWarning, stacklevel=3)
            return uniform, True
        if self._collapse_warn():
            warnings.warn(why, OTCollapseWarning, stacklevel=3)
        plan = torch.nan_to_num(plan, nan=0.0, posinf=0.0, neginf=0.0)
        return plan, False
