"""Typed records that plugin hooks return.

Every hook takes no arguments and returns a list of records. A record names a component, says in one line
what it does, and points to the implementation *lazily*: ``factory`` may be the object itself or an
``"module:attribute"`` string that is imported only when the component is used. That keeps
``otplug list-terms`` free of torch and POT imports.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import attrs

__all__ = [
    "SOLVER_PROBLEMS",
    "AlignmentPolicy",
    "CostTerm",
    "MetricSink",
    "PolicyEncoder",
    "Record",
    "Solver",
    "TimeReducer",
    "resolve",
]


def resolve(target: Any) -> Any:
    """Import ``"package.module:attr.sub"`` strings; return any other object unchanged."""
    if not isinstance(target, str):
        return target
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def _check_name(instance: Record, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value or value.strip() != value or " " in value:
        raise ValueError(f"{type(instance).__name__}.name must be a non-empty string without spaces, got {value!r}")


def _check_summary(instance: Record, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{type(instance).__name__}.summary must be a string, got {type(value).__name__}")


@attrs.frozen(kw_only=True)
class Record:
    """Base of all component records.

    ``name``: the name users write in configs (unique per kind across all plugins).
    ``factory``: a callable (or ``"module:attr"`` string) building the component.
    ``summary``: one line shown by ``otplug list-*``.
    ``config_cls``: an attrs class (or ``"module:attr"``) holding the component's options, or ``None``.
    """

    kind: ClassVar[str] = "component"
    hook: ClassVar[str] = ""

    name: str = attrs.field(validator=_check_name)
    factory: Any = attrs.field()
    summary: str = attrs.field(default="", validator=_check_summary)
    config_cls: Any = attrs.field(default=None)

    def load_factory(self) -> Any:
        return resolve(self.factory)

    def load_config_cls(self) -> Any:
        return resolve(self.config_cls) if self.config_cls is not None else None

    def same_as(self, other: Record) -> bool:
        """An identical re-registration (same class, name and implementation) is not a conflict."""
        return type(self) is type(other) and self.name == other.name and self.factory == other.factory


@attrs.frozen(kw_only=True)
class CostTerm(Record):
    """A cost term: builds one (n_src, n_tgt) cost matrix from a batch pair."""

    kind: ClassVar[str] = "term"
    hook: ClassVar[str] = "otplug_cost_terms"


@attrs.frozen(kw_only=True)
class TimeReducer(Record):
    """Reduces the time axis of (B, S, ...) features before the cost is computed."""

    kind: ClassVar[str] = "reducer"
    hook: ClassVar[str] = "otplug_time_reducers"


#: the OT problems a solver may declare (``Solver.problem``); the math of each is in ``otplug.solvers.problems``
SOLVER_PROBLEMS = ("kl-unbalanced", "balanced", "semi-relaxed", "custom")


def _check_problem(instance: Record, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and value not in SOLVER_PROBLEMS:
        raise ValueError(f"Solver.problem must be one of {', '.join(map(repr, SOLVER_PROBLEMS))} or None, "
                         f"got {value!r}")


def _check_check(instance: Solver, attribute: attrs.Attribute, value: Any) -> None:
    if instance.problem == "custom" and value is None:
        raise ValueError("Solver(problem='custom') needs check=: a callable (or 'module:attr') "
                         "check(plan, M, *, reg, reg_m, heuristic) -> otplug.PlanCheck")
    if instance.problem != "custom" and value is not None:
        raise ValueError(f"Solver.check is only used with problem='custom' (got problem={instance.problem!r}): the "
                         "core checks the declared problems itself")


@attrs.frozen(kw_only=True)
class Solver(Record):
    """Computes an OT plan for a cost matrix.

    ``problem``: the OT problem the solver solves, which decides what configs may ask of it and what the core
    checks on every plan (``otplug.solvers.problems``): ``"kl-unbalanced"`` (the config's finite ``tau_src``,
    ``tau_tgt`` as ``reg_m``; mass bound), ``"balanced"`` (exact marginals, ``marginals = "exact"``; marginal
    errors), ``"semi-relaxed"`` (one exact side; its marginal error), ``"custom"`` (any ``reg_m``; the record's
    own ``check``). ``None`` (declares nothing): treated as ``"kl-unbalanced"``, as before problems existed.
    ``check``: for ``"custom"`` only, ``check(plan, M, *, reg, reg_m, heuristic) -> otplug.PlanCheck``.
    ``dtype``: the lowest working precision the solver accepts (``"float32"`` / ``"float64"``); see the field.
    """

    kind: ClassVar[str] = "solver"
    hook: ClassVar[str] = "otplug_solvers"

    problem: str | None = attrs.field(default=None, validator=_check_problem)
    check: Any = attrs.field(default=None, validator=_check_check)
    #: the working precision the solver needs, ``"float32"`` or ``"float64"``: OTLoss hands it M in at least this
    #: dtype (M is never below float32: ``otplug.precision``). ``None``: M's own dtype (float32 or higher)
    dtype: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.in_(("float32", "float64"))))

    def load_check(self) -> Any:
        return resolve(self.check) if self.check is not None else None


@attrs.frozen(kw_only=True)
class AlignmentPolicy(Record):
    """Makes an OT batch from another dataloader compatible with the BC batch (ranks, masks, devices)."""

    kind: ClassVar[str] = "alignment"
    hook: ClassVar[str] = "otplug_alignment_policies"


@attrs.frozen(kw_only=True)
class MetricSink(Record):
    """Receives training metrics (console, JSONL, TensorBoard, W&B, plan pictures...)."""

    kind: ClassVar[str] = "sink"
    hook: ClassVar[str] = "otplug_metric_sinks"


@attrs.frozen(kw_only=True)
class PolicyEncoder(Record):
    """Gives ``encode_feature_for_ot(key, x)`` to a policy type that lacks it.

    ``name`` is the lerobot policy type it adapts (``policy.config.type``, e.g. ``"act"``).
    """

    kind: ClassVar[str] = "encoder"
    hook: ClassVar[str] = "otplug_policy_encoders"


RECORD_TYPES: tuple[type[Record], ...] = (CostTerm, TimeReducer, Solver, AlignmentPolicy, MetricSink, PolicyEncoder)
