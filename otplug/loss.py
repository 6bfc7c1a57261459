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

from otplug.cost import BoundTerm, compose_cost, term_keys, term_method_keys
from otplug.errors import OtplugError
from otplug.plugins import get_registry
from otplug.plugins.calls import Origin, calling, contract_error
from otplug.policy_encoder import resolve_encoder
from otplug.precision import AutocastEncoder, full_precision, upcast, upcast_batch
from otplug.solvers.base import collapse_message
from otplug.solvers.problems import PlanCheck, check_plan, mismatch

__all__ = ["OTCollapseWarning", "OTLoss", "OTResult", "OTSolverWarning"]


def _rows_of(batch: Mapping[str, Any]) -> int:
    """The number of rows of a batch (its first tensor's)."""
    return next((int(v.shape[0]) for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim), 0)


COLLAPSE_MASS = 1e-6  # plan mass below this is treated as a collapse


class OTCollapseWarning(RuntimeWarning):
    """The transport plan has (almost) no mass, so the OT loss trains nothing."""


class OTSolverWarning(RuntimeWarning):
    """The solver stopped at its iteration cap: the plan is approximate."""


@attrs.frozen
class OTResult:
    """``loss`` = the transport loss (``sum(pi * M)``, or the debiased ``S`` with ``debias = true``) + ``regularizer``.

    ``regularizer``: the sum of the terms' penalties (variance/covariance floors), a 0-d tensor with gradients, or
    ``None`` when no term has one. With ``debias = true``, ``within_plans`` holds the within-domain plans
    ``{"src": pi_ss, "tgt": pi_tt}`` and ``within_costs`` their costs.
    """

    loss: torch.Tensor
    plan: torch.Tensor
    cost: torch.Tensor
    metrics: dict[str, float]
    term_costs: dict[str, torch.Tensor] = attrs.field(factory=dict, repr=False)
    regularizer: torch.Tensor | None = attrs.field(default=None, repr=False)
    within_plans: dict[str, torch.Tensor] = attrs.field(factory=dict, repr=False)
    within_costs: dict[str, torch.Tensor] = attrs.field(factory=dict, repr=False)


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
            provided_reducer = registry.get("reducer", reducer_name, field=f"terms[{i}].time_reduce")
            reducer = provided_reducer.load()
            origin = Origin.of(term, name=spec.name)
            factory = term.load()
            with calling(origin, "the factory"):
                impl = factory(spec.options)
            self.terms.append(BoundTerm(spec.name, spec.type, float(spec.weight), impl, reducer, reducer_name,
                                        origin, Origin.of(provided_reducer)))
        solver = registry.get("solver", self.config.solver, field="solver")
        self.solver_origin = Origin.of(solver)
        #: the problem the solver declares (None: checked as "kl-unbalanced"); otplug.solvers.problems
        self.problem: str | None = solver.record.problem
        #: the lowest dtype the solver is given M in (its record's ``dtype``; float32 at least, otplug.precision)
        self.solve_dtype: torch.dtype | None = getattr(torch, solver.record.dtype) if solver.record.dtype else None
        why = mismatch(self.problem, self.config.marginals)
        if why is not None:  # the loader checks this too; an OTConfig built in Python gets here
            from otplug.errors import ConfigError

            raise ConfigError([("marginals", f"solver {self.config.solver!r} ({solver.provider}) solves {why}, but "
                                f"the config asks for marginals = {self.config.marginals!r}")], self.config.source)
        self._plan_check = None
        if self.problem == "custom":
            with calling(self.solver_origin, "its check"):
                self._plan_check = solver.record.load_check()
        options = self.config.solver_options
        if options is None:
            cls = solver.load_config_cls()
            with calling(self.solver_origin, "its config class"):
                options = cls() if cls is not None else None
        factory = solver.load()
        with calling(self.solver_origin, "the factory"):
            self.solver = factory(options)
        # debias: the within-domain problems get their own solvers (their own warm starts)
        self._within_solvers: dict[str, Any] = {}
        if self.config.debias:
            self._check_within_costs()
            for side in ("src", "tgt"):
                with calling(self.solver_origin, "the factory"):
                    self._within_solvers[side] = factory(options)
        self._term_refs: dict[str, float] = {}  # term_normalization's first mean per term (its divisor's floor)
        self._bound_warn = _RateLimiter()
        self._collapse_warn = _RateLimiter()
        self._cap_warn = _RateLimiter()
        self._encoders: dict[int, Any] = {}
        self._ema_encoders: dict[int, Any] = {}

    def _check_within_costs(self) -> None:
        missing = [(i, t) for i, t in enumerate(self.terms) if getattr(t.impl, "within_cost", None) is None]
        if missing:
            from otplug.errors import ConfigError

            raise ConfigError([(f"terms[{i}]", f"term {t.name!r} (type {t.type!r}{_provider(t)}) cannot compute "
                                "within-domain costs (it has no within_cost(batch, side, ctx)), which debias = true "
                                "needs for OT(a, a) and OT(b, b); set debias = false or drop the term")
                               for i, t in missing], self.config.source)

    # -- introspection -----------------------------------------------------------------------------------
    def required_keys(self, side: str) -> set[str]:
        """Batch keys one side (``"src"`` or ``"tgt"``) must carry."""
        if side not in ("src", "tgt"):
            raise ValueError(f"side must be 'src' or 'tgt', got {side!r}")
        keys: set[str] = set()
        for term in self.terms:
            keys |= term_keys(term, side)
        return keys

    def optional_keys(self, side: str) -> set[str]:
        """Keys a side may carry and terms then use: ``<key>_is_pad`` masks of the required keys and any
        term-declared ``optional_keys(side)`` (e.g. a custom ``pad_key``)."""
        keys = {f"{k}_is_pad" for k in self.required_keys(side)}
        for term in self.terms:
            keys |= term_method_keys(term, "optional_keys", side) or set()
        return keys

    def raw_keys(self, side: str) -> set[str]:
        """Keys whose raw values some term reads (label costs). Terms without a ``raw_keys`` method are
        assumed to read all their keys."""
        keys: set[str] = set()
        for term in self.terms:
            raw = term_method_keys(term, "raw_keys", side)
            keys |= raw if raw is not None else term_keys(term, side)
        return keys

    @property
    def embedding_keys(self) -> set[str]:
        """Keys whose features come from the policy's encoder."""
        keys: set[str] = set()
        for term in self.terms:
            keys |= term_method_keys(term, "embedding_keys") or set()
        return keys

    @property
    def predicts_actions(self) -> list[str]:
        """The names of the terms that compare the policy's *predicted* actions on a side (their
        ``predicts_actions()``, e.g. ``joint``): the encoder must predict action chunks (``predict_action_for_ot``)
        and their side's batch must carry the policy's inputs."""
        return self._terms_saying("predicts_actions")

    @property
    def needs_ema_encoder(self) -> bool:
        """Whether some term takes its constant side from an EMA copy of the policy (``stopgrad_encoder =
        "ema"``): then keep an :class:`otplug.ema.EMAEncoder`, update it after every optimizer step with
        ``config.ema_decay`` and pass it as ``ema_encoder``."""
        return bool(self.ema_encoder_terms)

    @property
    def ema_encoder_terms(self) -> list[str]:
        """The names of the terms that need the EMA encoder (their ``uses_ema_encoder()``), in config order."""
        return self._terms_saying("uses_ema_encoder")

    def _terms_saying(self, method: str) -> list[str]:
        """The names of the terms whose optional ``<method>()`` returns true, in config order (attributed calls)."""
        names = []
        for term in self.terms:
            fn = getattr(term.impl, method, None)
            if fn is not None:
                with calling(term.who, f"{method}()"):
                    if fn():
                        names.append(term.name)
        return names

    #: the key of the core's own state in :meth:`state_dict` (a term may not take this name)
    CORE_STATE = "<otplug>"

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The terms' own state (``{term name: term.state_dict()}``, terms that have one and a non-empty state),
        e.g. ``scale_anchor``'s reference scale, and under :data:`CORE_STATE` the core's (``term_normalization``'s
        reference means); saved with every checkpoint by ``otplug train``."""
        out: dict[str, dict[str, Any]] = {}
        if self._term_refs:
            out[self.CORE_STATE] = {"term_scale_refs": dict(self._term_refs)}
        for t in self.terms:
            get = getattr(t.impl, "state_dict", None)
            if get is not None:
                with calling(t.origin, "state_dict()"):
                    state = get()
                if state:
                    out[t.name] = dict(state)
        return out

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Give each term its saved state (terms without ``load_state_dict`` or without a saved entry keep theirs)."""
        refs = state.get(self.CORE_STATE, {}).get("term_scale_refs")
        if isinstance(refs, Mapping):
            self._term_refs = {str(k): float(v) for k, v in refs.items()}
        for t in self.terms:
            load = getattr(t.impl, "load_state_dict", None)
            if load is not None and t.name in state:
                with calling(t.origin, "load_state_dict()"):
                    load(state[t.name])

    def reset(self) -> None:
        """Forget warm-start state (e.g. after loading a checkpoint with different batch shapes)."""
        for solver in (self.solver, *self._within_solvers.values()):
            reset = getattr(solver, "reset", None)
            if reset is not None:
                with calling(self.solver_origin, "reset()"):
                    reset()

    # -- the loss ----------------------------------------------------------------------------------------
    def _encoder(self, encoder: Any) -> Any:
        if encoder is None:
            return None
        key = id(encoder)
        if key not in self._encoders:
            self._encoders = {key: resolve_encoder(encoder)}  # one policy per run; don't grow
        return self._encoders[key]

    def _ema_encoder(self, ema: Any) -> Any:
        if ema is None:
            return None
        from otplug.ema import EMAEncoder

        module = ema.module if isinstance(ema, EMAEncoder) else ema
        key = id(module)
        if key not in self._ema_encoders:
            self._ema_encoders = {key: resolve_encoder(module)}
        return self._ema_encoders[key]

    def __call__(self, src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor], encoder: Any = None,
                 ema_encoder: Any = None, *, paired: int | None = None) -> OTResult:
        """The OT loss of one step. ``encoder``: the policy (features with gradients); ``ema_encoder``: an
        :class:`otplug.ema.EMAEncoder` (or any encoder) for terms with ``stopgrad_encoder = "ema"``.

        ``paired``: only the first ``paired`` rows of ``src`` and ``tgt`` are pairs (row i with row i); the rest
        are unpaired rows (a target pool's frames and the source frames drawn for them). With the diagonal prior
        (``heuristic = true``) the plan is then block-diagonal: the pairs keep the diagonal prior, the unpaired
        block is solved with the product prior (docs/math.md §9). Without the prior every row is in one problem
        and ``paired`` only adds the metrics ``ot_unpaired_rows`` / ``ot_unpaired_mass``."""
        if paired is not None:
            n = _rows_of(src)
            if isinstance(paired, bool) or not isinstance(paired, int) or not 0 <= paired <= n or _rows_of(tgt) != n:
                raise OtplugError(f"paired must be an integer in [0, {n}] with as many target rows as source rows "
                                  f"({n} source, {_rows_of(tgt)} target rows), got {paired!r}")
        with full_precision() as amp:
            return self._call(upcast_batch(src), upcast_batch(tgt), encoder, ema_encoder, amp, paired)

    def _call(self, src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor], encoder: Any, ema_encoder: Any,
              amp: list[tuple[str, torch.dtype]], paired: int | None = None) -> OTResult:
        """The loss with autocast off and low-precision inputs upcast (:mod:`otplug.precision`); the encoders run
        under ``amp``, the autocast states of the caller, and give float32 features."""
        cfg = self.config
        embeds = bool(self.embedding_keys) or bool(self.predicts_actions)
        enc = self._encoder(encoder) if embeds else encoder
        ema = self._ema_encoder(ema_encoder) if embeds else ema_encoder
        enc, ema = (AutocastEncoder(e, amp) if e is not None else None for e in (enc, ema))
        breakdown = compose_cost(self.terms, src, tgt, enc, normalize_terms=cfg.term_normalization == "mean",
                                 ema_encoder=ema, within=cfg.debias, term_refs=self._term_refs)
        M = breakdown.matrix
        within = dict(breakdown.within)
        metrics: dict[str, float] = dict(breakdown.stats)
        self._watch_shares(metrics)
        if cfg.cost_normalization != "none":
            with torch.no_grad():
                scale = M.detach().mean() if cfg.cost_normalization == "mean" else M.detach().max()
                scale = float(scale) if float(scale) > 0 else 1.0
            M = M / scale
            within = {side: w / scale for side, w in within.items()}
            metrics["ot_cost_scale"] = scale
            self._watch_scale(scale)
        if cfg.debias:
            res = self._debiased(M, within, breakdown.terms, metrics, paired)
        else:
            res = self._from_cost(M, breakdown.terms, metrics, paired)
        if not breakdown.penalties:
            return res
        reg = torch.stack([p.to(res.loss.dtype) for p in breakdown.penalties.values()]).sum()
        res.metrics["ot_reg_loss"] = float(reg.detach())
        return attrs.evolve(res, loss=res.loss + reg, regularizer=reg)

    def _debiased(self, M: torch.Tensor, within: Mapping[str, torch.Tensor], term_costs: Mapping[str, torch.Tensor],
                  metrics: dict[str, float], paired: int | None = None) -> OTResult:
        """``S = OT(a, b) - 1/2 OT(a, a) - 1/2 OT(b, b)``, each ``OT = sum(pi * M)`` with its own plan of its own
        ``M.detach()`` (same reg, tau, solver)."""
        res = self._from_cost(M, term_costs, metrics, paired)
        metrics = res.metrics
        ot_xy = res.loss
        parts = {}
        plans = {}
        converged = metrics["ot_solver/converged"] > 0
        for side, label in (("src", "xx"), ("tgt", "yy")):
            Mw = within[side]
            problem = "within-source" if side == "src" else "within-target"
            plan, health = self._plan(Mw, self._within_solvers[side], problem)
            plans[side] = plan
            parts[label] = (plan * Mw).sum()
            converged = converged and health["converged"] > 0
            metrics[f"ot_debias/pi_sum_{label}"] = health["pi_sum"]
            metrics[f"ot_debias/iterations_{label}"] = health["iterations"]
            metrics[f"ot_debias/converged_{label}"] = health["converged"]
            metrics[f"ot_debias/collapsed_{label}"] = health["collapsed"]
        loss = ot_xy - 0.5 * (parts["xx"].to(ot_xy.dtype) + parts["yy"].to(ot_xy.dtype))
        metrics["ot_debias/xy"] = float(ot_xy.detach())
        metrics["ot_debias/xx"] = float(parts["xx"].detach())
        metrics["ot_debias/yy"] = float(parts["yy"].detach())
        metrics["ot_loss"] = float(loss.detach())
        metrics["ot_solver/converged"] = float(converged)
        return attrs.evolve(res, loss=loss, metrics=metrics, within_plans=plans, within_costs=dict(within))

    #: the normalised cost's scale fallen below this fraction of its first value is reported once
    SCALE_DROP = 1e-3

    def _watch_scale(self, scale: float) -> None:
        """Dividing M by its own mean (or max) is a constant for autograd: the gradient of the normalised loss grows
        as 1/scale. When the scale falls far below its first value the compared features are collapsing onto each
        other (every distance shrinking together) -- reported once, with the way out."""
        first = self.__dict__.setdefault("_first_scale", scale)
        if scale < self.SCALE_DROP * first and not self.__dict__.get("_scale_warned"):
            self.__dict__["_scale_warned"] = True
            warnings.warn(
                f"the OT cost's {self.config.cost_normalization} fell to {scale:.3g} from {first:.3g} at the first "
                "call (metric ot_cost_scale): the features the terms compare are collapsing onto each other, and "
                "the normalisation (a constant for autograd) amplifies the pull as 1/scale. Use cost_normalization = "
                "'none', or add a term that does not depend on the features (docs/math.md §7, §9)",
                OTCollapseWarning, stacklevel=4)

    #: a term whose share of M stays below SMALL_SHARE for SMALL_SHARE_STEPS calls in a row is reported once
    SMALL_SHARE = 0.05
    SMALL_SHARE_STEPS = 50

    def _watch_shares(self, metrics: Mapping[str, float]) -> None:
        counts = self.__dict__.setdefault("_small_share_steps", {})
        for key, share in metrics.items():
            if not key.startswith("ot_cost_share/"):
                continue
            name = key.split("/", 1)[1]
            counts[name] = counts.get(name, 0) + 1 if share < self.SMALL_SHARE else 0
            if counts[name] == self.SMALL_SHARE_STEPS and len(self.terms) > 1:
                warnings.warn(
                    f"OT term {name!r} has been below {self.SMALL_SHARE:.0%} of the cost M for {counts[name]} steps "
                    f"(share {share:.1%}, metric ot_cost_share/{name}): the other terms drown it. Raise its weight, "
                    "or set term_normalization = 'mean' so that weights are shares of M", stacklevel=3)

    def from_cost(self, M: torch.Tensor, term_costs: Mapping[str, torch.Tensor] | None = None,
                  metrics: dict[str, float] | None = None) -> OTResult:
        """Solve and build the loss from an already composed cost matrix (used by distributed scopes); a float16 /
        bfloat16 M is solved and summed in float32 (:mod:`otplug.precision`)."""
        with full_precision():
            return self._from_cost(upcast(M), upcast(dict(term_costs or {})), metrics)

    def _from_cost(self, M: torch.Tensor, term_costs: Mapping[str, torch.Tensor],
                   metrics: dict[str, float] | None, paired: int | None = None) -> OTResult:
        metrics = dict(metrics or {})
        n, m = M.shape
        if paired is not None and paired < n and self.config.heuristic:
            plan, health = self._block_plan(M, paired)
        else:
            plan, health = self._plan(M, self.solver, None)
        if paired is not None:
            metrics["ot_unpaired_rows"] = float(n - paired)
            total = float(plan.sum())
            metrics["ot_unpaired_mass"] = float(plan[paired:].sum()) / total if total > 0 else 0.0
        loss = (plan * M).sum()
        # the solver's own health numbers first: the core's keys below (converged, ...) are never overridden
        metrics.update({f"ot_solver/{k}": v for k, v in health["info"].items()})
        metrics.update({
            "ot_loss": float(loss.detach()),
            "ot_pi_sum": health["pi_sum"],
            "ot_headroom": health["headroom"],
            **health["check"],
            "ot_collapsed": health["collapsed"],
            "ot_fallback": health["fallback"],
            "ot_solver/iterations": health["iterations"],
            "ot_solver/converged": health["converged"],
            "ot_solver/error": health["error"],
        })
        if n == m:
            metrics["ot_pi_diag"] = float(torch.diagonal(plan).sum())
        for name, mt in (term_costs or {}).items():
            metrics[f"ot_cost/{name}"] = float(mt.detach().mean())
        return OTResult(loss=loss, plan=plan, cost=M, metrics=metrics, term_costs=dict(term_costs or {}))

    def _block_plan(self, M: torch.Tensor, paired: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The block-diagonal plan of ``paired`` pairs under the diagonal prior and the unpaired rows under the
        product prior: each block solved with unit-mass marginals, scaled by its share of the rows (docs/math.md §9)."""
        n = M.shape[0]
        plan = torch.zeros_like(M, dtype=M.dtype).detach()
        healths = []
        for lo, hi, prior, problem in ((0, paired, True, "the paired rows"), (paired, n, False, "the pool rows")):
            if hi == lo:
                continue
            block, health = self._plan(M[lo:hi, lo:hi], self.solver, problem, heuristic=prior)
            plan[lo:hi, lo:hi] = block * ((hi - lo) / n)
            healths.append(health)
        pool = healths[-1]
        check: dict[str, float] = {}
        for h in healths:
            for k, val in h["check"].items():
                check[k] = max(check.get(k, val), val)
        health = {
            "info": pool["info"], "check": check, "pi_sum": float(plan.sum()),
            "headroom": min(h["headroom"] for h in healths),
            **{k: max(h[k] for h in healths) for k in ("collapsed", "fallback", "error")},
            "iterations": pool["iterations"], "converged": min(h["converged"] for h in healths),
        }
        return plan, health

    def _plan(self, M: torch.Tensor, solver: Any, problem: str | None,
              heuristic: bool | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """The checked plan of ``M.detach()`` (detached, M's device and dtype) and its health numbers; a collapsed
        plan, or one that fails the check of the solver's declared problem (:func:`otplug.solvers.problems.check_plan`
        or the record's own ``check``), goes through ``on_collapse``. ``problem`` names a within-domain problem in
        messages."""
        cfg = self.config
        Md = M.detach()
        if self.solve_dtype is not None and Md.dtype.itemsize < self.solve_dtype.itemsize:
            Md = Md.to(self.solve_dtype)  # the solver's declared working precision (Solver.dtype)
        tau = cfg.reg_m
        heuristic = cfg.heuristic if heuristic is None else heuristic
        with calling(self.solver_origin, "solve()"):
            result = solver.solve(Md, reg=cfg.reg, reg_m=tau, heuristic=heuristic)
        plan, iterations, converged, error, info = self._check_result(result, Md)
        plan = plan.to(device=M.device, dtype=M.dtype)
        mass = float(plan.sum()) if bool(torch.isfinite(plan).all()) else float("nan")
        m_min = float(Md.min())
        collapsed = not math.isfinite(mass) or mass < COLLAPSE_MASS
        check = PlanCheck(True) if collapsed else self._check_plan(plan, Md, heuristic)
        fallback = False
        if collapsed:
            plan, fallback = self._on_collapse(plan, Md, mass, problem)
        elif not check.ok:
            plan, fallback = self._on_wrong_plan(plan, check.message, converged, iterations, error, problem)
        if not converged and not collapsed and check.ok and self._cap_warn():
            warnings.warn(
                f"OT solver {cfg.solver!r} stopped unconverged{_on(problem)} ({iterations} iterations, error "
                f"{error:.3g}); the plan is approximate (ot_solver/converged = 0). Raise solver_options.max_iter, "
                "or reg / tau_src / tau_tgt, or set cost_normalization.",
                OTSolverWarning, stacklevel=4)
        health = {
            "info": info,
            "check": dict(check.metrics),
            "pi_sum": float(plan.sum()),
            "headroom": m_min / cfg.reg,
            "collapsed": float(collapsed),
            "fallback": float(fallback),
            "iterations": float(iterations),
            "converged": float(converged and check.ok),
            "error": error,
        }
        return plan.detach(), health

    def _check_plan(self, plan: torch.Tensor, M: torch.Tensor, heuristic: bool) -> PlanCheck:
        """The check of the declared problem (one place each: ``check_plan``, or a custom solver's ``check``)."""
        cfg = self.config
        if self._plan_check is None:
            return check_plan(self.problem, plan, M, reg=cfg.reg, reg_m=cfg.reg_m, heuristic=heuristic)
        # a custom problem: the core's marginal errors, then the solver's own verdict
        base = check_plan("custom", plan, M, reg=cfg.reg, reg_m=(math.inf, math.inf), heuristic=heuristic)
        metrics = {k: v for k, v in base.metrics.items() if k.startswith("ot_marginal_error/")}
        with calling(self.solver_origin, "check()"):
            verdict = self._plan_check(plan.detach(), M, reg=cfg.reg, reg_m=cfg.reg_m, heuristic=heuristic)
        if not isinstance(verdict, PlanCheck):
            raise contract_error(self.solver_origin, "check()", "must return an otplug.PlanCheck(ok, message, "
                                 f"metrics), got {type(verdict).__name__}")
        with calling(self.solver_origin, "check() result"):
            metrics.update({f"ot_check/{k}": float(v) for k, v in verdict.metrics.items()})
        return PlanCheck(bool(verdict.ok), str(verdict.message) or "its own check failed", metrics)

    def _check_result(self, result: Any, M: torch.Tensor) -> tuple[torch.Tensor, int, bool, float, dict[str, float]]:
        """The solver's result, checked against the solver contract: a plan of M's shape, floating, >= 0."""
        who = self.solver_origin
        plan = getattr(result, "plan", None)
        if not isinstance(plan, torch.Tensor):
            raise contract_error(who, "solve()", "must return a SolveResult (otplug.solvers.base) with a plan "
                                 f"tensor, got {type(result).__name__}")
        if not torch.is_floating_point(plan):
            raise contract_error(who, "solve()", f"returned a {str(plan.dtype).removeprefix('torch.')} plan; the "
                                 "plan must be floating point")
        if tuple(plan.shape) != tuple(M.shape):
            raise contract_error(who, "solve()", f"returned a plan of shape {tuple(plan.shape)} for a cost of shape "
                                 f"{tuple(M.shape)}; the plan must have the cost's shape (never broadcast)")
        with calling(who, "solve() result"):
            iterations = int(result.iterations)
            converged = bool(result.converged)
            error = float(result.error)
            info = {str(k): float(v) for k, v in (getattr(result, "info", None) or {}).items()}
        pd = plan.detach()
        lo, hi = torch.stack([pd.amin(), pd.amax()]).tolist()
        tol = 64.0 * torch.finfo(pd.dtype).eps * max(hi, 0.0) if math.isfinite(hi) else 0.0
        if lo < -tol:  # NaN and inf go through the collapse handling below, with the solver named
            raise contract_error(who, "solve()", f"returned a plan with negative entries (min {lo:.3g}); a "
                                 "transport plan is >= 0")
        if lo < 0:
            plan = plan.clamp_min(0.0)
        return plan, iterations, converged, error, info

    def _on_wrong_plan(self, plan: torch.Tensor, what: str, converged: bool, iterations: int, error: float,
                       problem: str | None = None) -> tuple[torch.Tensor, bool]:
        """A plan that fails its problem's check is wrong: flag it (never "converged"), then on_collapse."""
        cfg = self.config
        declared = self.problem or "kl-unbalanced"
        if converged:
            why = (f"OT solver {cfg.solver!r} ({declared}){_on(problem)}: {what}: the plan is wrong although the "
                   "solver reported convergence (ot_solver/converged = 0).")
        else:
            why = (f"OT solver {cfg.solver!r} ({declared}) stopped at its iteration cap or stalled{_on(problem)} "
                   f"({iterations} iterations, error {error:.3g}): {what}: the plan is wrong "
                   "(ot_solver/converged = 0).")
        why += " Raise reg / solver_options.max_iter or normalise the cost (cost_normalization = 'mean')."
        if cfg.on_collapse == "raise":
            raise OtplugError(why + " (on_collapse = 'raise')")
        if cfg.on_collapse == "uniform":
            if self._bound_warn():
                warnings.warn(why + " Using the uniform coupling instead (on_collapse = 'uniform').",
                              OTSolverWarning, stacklevel=5)
            n, m = plan.shape
            return torch.full_like(plan, 1.0 / (n * m)), True
        if self._bound_warn():
            warnings.warn(why, OTSolverWarning, stacklevel=5)
        return plan, False

    def _on_collapse(self, plan: torch.Tensor, M: torch.Tensor, mass: float,
                     problem: str | None = None) -> tuple[torch.Tensor, bool]:
        cfg = self.config
        why = collapse_message(mass, float(M.min()) / cfg.reg, cfg.solver)
        if problem is not None:
            why = f"({problem} problem of debias = true) " + why
        if cfg.on_collapse == "raise":
            raise OtplugError(why + " (on_collapse = 'raise')")
        if cfg.on_collapse == "uniform":
            n, m = M.shape
            uniform = torch.full_like(plan, 1.0 / (n * m))
            if self._collapse_warn():
                warnings.warn(why + " Using the uniform coupling instead (on_collapse = 'uniform'; "
                              "ot_fallback = 1 in the metrics).", OTCollapseWarning, stacklevel=5)
            return uniform, True
        if self._collapse_warn():
            warnings.warn(why, OTCollapseWarning, stacklevel=5)
        plan = torch.nan_to_num(plan, nan=0.0, posinf=0.0, neginf=0.0)
        return plan, False


def _on(problem: str | None) -> str:
    return f" on the {problem} problem (debias = true)" if problem else ""


def _provider(term: BoundTerm) -> str:
    provider = term.origin.provider if term.origin is not None else ""
    return f", from {provider}" if provider else ""
