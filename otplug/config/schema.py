"""The resolved config: :class:`OTConfig` and its :class:`TermSpec` entries (frozen attrs classes).

These classes validate values on construction (so a config built in Python is checked too); names of
registered components (term types, solver, reducers) are checked against the registry by
:func:`otplug.config.load_config`, which also collects every problem instead of stopping at the first.
"""

from __future__ import annotations

from typing import Any

import attrs

from otplug import validators as v

__all__ = [
    "COST_NORMALIZATIONS",
    "TERM_NORMALIZATIONS",
    "DEFAULT_EMA_DECAY",
    "DEFAULT_REG",
    "DEFAULT_TAU",
    "MIN_REG",
    "ON_COLLAPSE",
    "RESERVED_TERM_KEYS",
    "OTConfig",
    "TermSpec",
]

DEFAULT_REG = 0.01
DEFAULT_TAU = 0.01
#: decay of the EMA target encoder (``stopgrad_encoder = "ema"``), as in ROT / BYOL-style target networks
DEFAULT_EMA_DECAY = 0.99
COST_NORMALIZATIONS = ("none", "mean", "max")
#: per-term normalisation before ``weight`` ("mean": each term's cost divided by its own detached mean, so the
#: weights are the terms' shares of M)
TERM_NORMALIZATIONS = ("none", "mean")
ON_COLLAPSE = ("warn", "raise", "uniform")
# keys of a native term table that belong to TermSpec, not to the term's own config class
RESERVED_TERM_KEYS = ("type", "name", "weight", "time_reduce")


MIN_REG = 1e-10
"""Smallest ``reg`` a config accepts. The plan's entries are ``exp((f_i + g_j - M_ij) / reg)`` with dual
potentials of the size of the costs, so each entry carries a rounding error of about
``eps_machine * max|M| / reg`` in its exponent (2.2e-16 in float64): below ~1e-10 the entropic plan is not
computable for any cost scale worth training on (and Sinkhorn would need ~tau/reg iterations). Normalise the
cost (``cost_normalization``) and use reg in ~[1e-3, 1] instead."""

_positive_tau = v.NumberValidator("tau", low=0, low_open=True, allow_inf=True).with_hint(
    "the marginal relaxation (KL) of unbalanced OT; inf (or marginals = 'exact') makes that marginal exact, for a "
    "solver that declares the balanced or semi-relaxed problem"
)
_reg = v.at_least(MIN_REG).with_hint(
    f"the entropic regularisation epsilon; below {MIN_REG:g} the plan exp(-M/reg) cannot be computed in floating "
    "point: normalise the cost (cost_normalization = 'mean') and use reg in about [1e-3, 1]"
)


def _term_weight(instance: Any, attribute: Any, value: Any) -> None:
    v.finite(instance, attribute, value)
    if value == 0:
        raise v.FieldValueError("is 0, so the term contributes nothing to the cost; remove the term or give it a "
                                "weight > 0", attribute.name if attribute is not None else None)
    v.positive(instance, attribute, value)


def _name(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value or value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"must be a non-empty name without spaces, got {v.show_value(value)}")


def _term_name(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or value != value.strip() or "\n" in value:
        raise ValueError(f"must be a non-empty name without leading or trailing spaces, got {v.show_value(value)}")
    if value == "<otplug>":  # OTLoss.CORE_STATE: the core's entry in the saved term state
        raise ValueError("'<otplug>' is reserved; choose another term name")


def _optional_name(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        _name(instance, attribute, value)


def _terms(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"expected a tuple of TermSpec, got {type(value).__name__}")
    if not value:
        raise ValueError("no terms: a config needs at least one cost term")
    seen: dict[str, int] = {}
    for i, term in enumerate(value):
        if not isinstance(term, TermSpec):
            raise TypeError(f"terms[{i}] is a {type(term).__name__}, expected a TermSpec")
        if term.name in seen:
            raise ValueError(f"duplicate term name {v.show_value(term.name)} (terms[{seen[term.name]}] and terms[{i}])")
        seen[term.name] = i


DEBIAS_WITH_HEURISTIC = ("has no effect with heuristic = true: the diagonal prior puts the within-domain plans on "
                         "their zero-cost diagonal, so OT(a, a) = OT(b, b) = 0 and S = OT(a, b); use one or the other")


def _debias(instance: Any, _attribute: Any, value: Any) -> None:
    # instance is None when the loader checks the field alone; it checks the pair itself
    if value is True and instance is not None and instance.heuristic is True:
        raise v.FieldValueError(DEBIAS_WITH_HEURISTIC, "debias")


_ema_decay = v.in_range(0, 1).with_hint(
    "the EMA target encoder's decay: ema = decay * ema + (1 - decay) * param after each optimizer step; "
    "used only by terms with stopgrad_encoder = 'ema'"
)


def _to_float(value: Any) -> Any:
    # ints are fine for floats; keep everything else as is for the validator to report
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class TermSpec:
    """One cost term: ``M += weight * M_term`` where ``M_term`` comes from the registered term ``type``.

    ``options`` is an instance of the term's registered config class (e.g. ``LabelConfig``).
    """

    type: str = attrs.field(validator=_name)
    name: str = attrs.field(validator=_term_name)
    weight: float = attrs.field(default=1.0, converter=_to_float, validator=_term_weight)
    options: Any = None
    time_reduce: str | None = attrs.field(default=None, validator=_optional_name)


@attrs.frozen(kw_only=True)
class OTConfig:
    """The OT loss configuration. See ``docs/config.md`` for every field."""

    terms: tuple[TermSpec, ...] = attrs.field(converter=_to_tuple, validator=_terms)
    reg: float = attrs.field(default=DEFAULT_REG, converter=_to_float, validator=[v.positive, _reg])
    tau_src: float = attrs.field(default=DEFAULT_TAU, converter=_to_float, validator=_positive_tau)
    tau_tgt: float = attrs.field(default=DEFAULT_TAU, converter=_to_float, validator=_positive_tau)
    heuristic: bool = attrs.field(default=False, validator=v.boolean)
    solver: str = attrs.field(default="sinkhorn", validator=_name)
    solver_options: Any = None
    time_reduce: str = attrs.field(default="flatten", validator=_name)
    cost_normalization: str = attrs.field(default="none", validator=v.one_of(COST_NORMALIZATIONS))
    term_normalization: str = attrs.field(default="none", validator=v.one_of(TERM_NORMALIZATIONS))
    on_collapse: str = attrs.field(default="warn", validator=v.one_of(ON_COLLAPSE))
    debias: bool = attrs.field(default=False, validator=[v.boolean, _debias])
    ema_decay: float = attrs.field(default=DEFAULT_EMA_DECAY, converter=_to_float, validator=_ema_decay)
    source: str | None = attrs.field(default=None, eq=False)

    @property
    def marginals(self) -> str:
        """``"relaxed"`` (both taus finite), ``"exact"`` (both ``inf``: balanced OT), ``"exact-src"`` or
        ``"exact-tgt"`` (one ``inf``: semi-relaxed OT)."""
        from otplug.solvers.problems import marginals_of

        return marginals_of(self.tau_src, self.tau_tgt)

    @property
    def reg_m(self) -> tuple[float, float]:
        """``(tau_src, tau_tgt)`` as the solver gets it (``inf`` for an exact side)."""
        return (self.tau_src, self.tau_tgt)

    def term(self, name: str) -> TermSpec:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(name)

    def time_reduce_for(self, term: TermSpec) -> str:
        """The time reducer of ``term``: its own ``time_reduce`` or the config's default."""
        return term.time_reduce if term.time_reduce is not None else self.time_reduce
