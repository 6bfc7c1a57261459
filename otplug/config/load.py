"""``load_config``, ``dump_config`` and ``describe_config``.

Loading collects **every** problem of a config (unknown keys, wrong types, bad values, unknown component
names, duplicate term names, terms that contribute nothing) before raising one
:class:`~otplug.errors.ConfigError`; each problem carries the path to the field, e.g. ``terms[1].dim_slice``
or ``features[0].term_weight``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from otplug.config.convert import (
    Problem,
    StructureProblems,
    describe_value,
    exception_message,
    join_path,
    structure,
    structure_attrs,
    suggest_key,
    unstructure,
)
from otplug.config.files import read_config_file
from otplug.config.schema import DEBIAS_WITH_HEURISTIC, RESERVED_TERM_KEYS, OTConfig, TermSpec
from otplug.validators import show_value
from otplug.config.seed import SEED_TOP_LEVEL_KEYS, SeedFeature
from otplug.errors import ConfigError, OtplugError
from otplug.solvers.problems import MARGINALS, PROBLEM_OF_MARGINALS, marginals_of, mismatch

__all__ = ["describe_config", "dump_config", "load_config"]

#: the one list of exceptions: OTConfig fields that are not top-level scalar settings, each read and written by
#: its own code. Every other field is a setting of that name, derived from the schema (:func:`scalar_fields`), so
#: a new OTConfig field is read, checked and dumped without another list to keep in step.
NOT_SCALAR = {
    "terms": "the term tables: _native_terms / _seed_terms, written last by dump_config",
    "solver_options": "the solver's own config class: _solver_options",
    "source": "where the config was read from, not a key of the file",
}
#: keys of a native config file that are not OTConfig fields: ``marginals`` names the exact sides (tau = inf)
NOT_FIELDS = ("marginals",)
_SCALAR_TYPES = (float, bool, str)


def scalar_fields(cls: type = OTConfig) -> dict[str, type]:
    """``{field: type}`` of the top-level scalar settings of ``cls``: every attrs field but :data:`NOT_SCALAR`, in
    field order, typed by its annotation (float, bool or str; any other type needs code of its own and an entry in
    :data:`NOT_SCALAR`, else a ``TypeError`` here -- at import for OTConfig)."""
    import typing

    hints = typing.get_type_hints(cls)
    out: dict[str, type] = {}
    for a in attrs.fields(cls):
        if a.name in NOT_SCALAR:
            continue
        kind = hints[a.name]
        if kind not in _SCALAR_TYPES:
            raise TypeError(f"{cls.__name__}.{a.name}: {kind} is not a scalar setting (float, bool or str); read and "
                            "write it with code of its own and list it in otplug.config.load.NOT_SCALAR")
        out[a.name] = kind
    return out


# top-level scalar settings, structured by their OTConfig field types
_TYPES = scalar_fields()
_SCALARS = tuple(_TYPES)
_FIELDS = {a.name: a for a in attrs.fields(OTConfig)}
_NATIVE_KEYS = ("terms", *_SCALARS, *NOT_FIELDS, "solver_options")


def load_config(config: Any, *, source: str | None = None) -> OTConfig:
    """Load and validate a config.

    ``config``: a path (``str`` or ``os.PathLike``; ``.json``, ``.toml``, ``.yaml``/``.yml``), a mapping (the
    parsed file), or an :class:`OTConfig` (returned as is). Both the native format (``terms``) and the seed
    format (``features``) are accepted. Raises :class:`~otplug.errors.ConfigError` listing every problem.
    """
    if isinstance(config, OTConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        data, source = read_config_file(config)
    elif isinstance(config, Mapping):
        data = config
    else:
        raise TypeError(f"load_config() takes a path, a mapping or an OTConfig, got {type(config).__name__}")
    return _Loader(source).load(data)


class _Loader:
    def __init__(self, source: str | None) -> None:
        from otplug.plugins import get_registry

        self.source = source
        self.registry = get_registry()
        self.problems: list[Problem] = []

    # -- helpers -------------------------------------------------------------------------------------
    def _add(self, exc: StructureProblems) -> None:
        self.problems += exc.problems

    def _lookup(self, kind: str, name: str, path: str) -> Any | None:
        """The registry record, or ``None`` after recording the problem (with suggestions)."""
        try:
            return self.registry.get(kind, name)
        except OtplugError as exc:
            self.problems.append((path, str(exc)))
            return None

    def _config_cls(self, provided: Any, path: str) -> tuple[bool, Any]:
        """``(ok, config class or None)``; a plugin whose config class does not import is a problem, not a crash."""
        try:
            return True, provided.load_config_cls()
        except OtplugError as exc:  # names the component, its plugin and the import error
            self.problems.append((path, str(exc)))
        except Exception as exc:  # noqa: BLE001
            self.problems.append((path, f"cannot load the config class of {provided.record.kind} "
                                        f"{provided.record.name!r}: {type(exc).__name__}: {exc}"))
        return False, None

    # -- top level -----------------------------------------------------------------------------------
    def load(self, data: Mapping[str, Any]) -> OTConfig:
        seed = "features" in data
        if seed and "terms" in data:
            self.problems.append(("", "a config has either `features` (the seed format) or `terms` (the native "
                                      "format), not both"))
        allowed = [*_NATIVE_KEYS] if not seed else [k for k in (*SEED_TOP_LEVEL_KEYS, *_NATIVE_KEYS) if k != "terms"]
        for key in data:
            if not isinstance(key, str):
                self.problems.append(("", f"keys must be strings, got {describe_value(key)}"))
            elif key not in allowed and not (seed and key == "terms"):
                self.problems.append((key, suggest_key(key, allowed)))

        settings: dict[str, Any] = {}
        for name in _SCALARS:
            if name not in data:
                continue
            attribute = _FIELDS[name]
            try:
                raw = data[name]
                if name in ("tau_src", "tau_tgt") and isinstance(raw, float) and raw == math.inf:
                    value = raw  # an exact marginal (TOML inf, YAML .inf); checked against the solver below
                else:
                    value = structure(raw, _TYPES[name], name)
                attribute.validator(None, attribute, attribute.converter(value) if attribute.converter else value)
            except StructureProblems as exc:
                self._add(exc)
                continue
            except Exception as exc:  # noqa: BLE001 -- a validator's message
                self.problems.append((name, exception_message(exc)))
                continue
            settings[name] = value

        if settings.get("debias") is True and settings.get("heuristic") is True:
            self.problems.append(("debias", DEBIAS_WITH_HEURISTIC))
        self._marginals(data, settings)
        for name, kind in (("solver", "solver"), ("time_reduce", "reducer")):
            if name in settings:
                if self._lookup(kind, settings[name], name) is None:
                    settings.pop(name)
        solver_options = self._solver_options(data, settings)
        self._solver_problem(data, settings)

        terms = self._seed_terms(data["features"]) if seed else self._native_terms(data.get("terms"), "terms" in data)

        if self.problems:
            raise ConfigError(self.problems, self.source)
        try:
            return OTConfig(terms=tuple(terms), solver_options=solver_options, source=self.source, **settings)
        except Exception as exc:  # noqa: BLE001 -- should have been caught above; never a traceback
            raise ConfigError([("", exception_message(exc))], self.source) from None

    def _marginals(self, data: Mapping[str, Any], settings: dict[str, Any]) -> None:
        """``marginals = "exact" | "exact-src" | "exact-tgt"`` sets the exact sides' tau to inf (JSON has no inf);
        a finite tau given for an exact side, or an inf one with ``"relaxed"``, contradicts it."""
        if "marginals" not in data:
            return
        try:
            marginals = structure(data["marginals"], str, "marginals")
        except StructureProblems as exc:
            self._add(exc)
            return
        if marginals not in MARGINALS:
            self.problems.append(("marginals", f"must be one of {', '.join(map(repr, MARGINALS))}, got "
                                               f"{show_value(marginals)}"))
            return
        exact = {"exact": ("tau_src", "tau_tgt"), "exact-src": ("tau_src",),
                 "exact-tgt": ("tau_tgt",)}.get(marginals, ())
        for name in ("tau_src", "tau_tgt"):
            given = settings.get(name)
            if name in exact:
                if given is not None and not math.isinf(given):
                    self.problems.append((name, f"is {_fmt(float(given))}, but marginals = {marginals!r} makes this "
                                                "marginal exact (tau = inf); drop the key or set it to inf"))
                settings[name] = math.inf
            elif given is not None and math.isinf(given):
                self.problems.append((name, f"is inf (an exact marginal), but marginals = {marginals!r} relaxes "
                                            "this side; give a finite tau or the marginals that make it exact"))

    def _solver_problem(self, data: Mapping[str, Any], settings: dict[str, Any]) -> None:
        """The config's marginals must be those of the problem the chosen solver declares (its record's
        ``problem``; ``otplug.solvers.problems``)."""
        name = settings.get("solver", _FIELDS["solver"].default)
        if "solver" in data and "solver" not in settings:
            return  # the solver itself is wrong (reported)
        if any(t in data and t not in settings for t in ("tau_src", "tau_tgt")):
            return  # a tau is wrong (reported)
        try:
            provided = self.registry.get("solver", name)
        except OtplugError:
            return  # reported by the lookup
        problem = provided.record.problem
        if problem == "balanced" and "marginals" not in data:
            # where tau is not given, the marginals follow the solver's problem (the default tau is the unbalanced
            # default's); a finite tau given with a balanced solver contradicts it
            given = [t for t in ("tau_src", "tau_tgt") if t in data and not math.isinf(settings[t])]
            for t in given:
                self.problems.append((t, f"is {_fmt(float(settings[t]))} (a KL-relaxed marginal), but solver {name!r} "
                                         f"({provided.provider}) solves balanced OT, whose marginals are exact; drop "
                                         f"{t} or choose a KL-unbalanced solver (e.g. 'sinkhorn')"))
            if given:
                return
            settings["tau_src"] = settings["tau_tgt"] = math.inf
        tau = (settings.get("tau_src", _FIELDS["tau_src"].default), settings.get("tau_tgt", _FIELDS["tau_tgt"].default))
        marginals = marginals_of(*tau)
        why = mismatch(problem, marginals)
        if why is None:
            return
        wanted = PROBLEM_OF_MARGINALS[marginals]
        fit = [p.record.name for p in self.registry.components("solver") if p.record.problem == wanted
               or (wanted == "kl-unbalanced" and p.record.problem is None)]
        hint = (f"solvers for marginals = {marginals!r}: {', '.join(fit)}" if fit else
                f"no installed solver declares the {wanted} problem")
        if "marginals" in data:
            field = "marginals"
        elif marginals != "relaxed":
            field = next(t for t, x in zip(("tau_src", "tau_tgt"), tau) if math.isinf(x))
        else:
            field = "solver" if "solver" in data else "marginals"
        self.problems.append((field, f"solver {name!r} ({provided.provider}) solves {why}, but the config asks for "
                                     f"marginals = {marginals!r} (tau_src = {_fmt(tau[0])}, tau_tgt = {_fmt(tau[1])}); "
                                     f"{hint}"))

    def _solver_options(self, data: Mapping[str, Any], settings: dict[str, Any]) -> Any:
        solver = settings.get("solver", _FIELDS["solver"].default)
        if "solver" in data and "solver" not in settings:
            return None  # the solver itself is wrong: its options cannot be checked
        record = self._lookup("solver", solver, "solver")
        if record is None:
            return None
        ok, cls = self._config_cls(record, "solver" if "solver" in data else "solver_options")
        if not ok:
            return None
        given = data.get("solver_options")
        if cls is None:
            if given:
                self.problems.append(("solver_options", f"solver {show_value(solver)} takes no options"))
            return None
        try:
            return structure({} if given is None else given, cls, "solver_options")
        except StructureProblems as exc:
            self._add(exc)
            return None

    # -- native terms --------------------------------------------------------------------------------
    def _native_terms(self, raw: Any, present: bool) -> list[TermSpec]:
        if not present:
            self.problems.append(("terms", "missing: a config needs at least one cost term (a `terms` list, or "
                                           "`features` in the seed format)"))
            return []
        if not isinstance(raw, (list, tuple)):
            self.problems.append(("terms", f"expected a list of term tables, got {describe_value(raw)}"))
            return []
        if not raw:
            self.problems.append(("terms", "is empty: a config needs at least one cost term"))
            return []
        terms: list[TermSpec] = []
        names: list[tuple[str, str, bool]] = []
        for i, entry in enumerate(raw):
            path = join_path("terms", i)
            built = self._native_term(entry, path)
            if built is not None:
                terms.append(built)
            if isinstance(entry, Mapping):
                name = entry.get("name", entry.get("type"))
                if isinstance(name, str):
                    names.append((join_path(path, "name"), name, "name" in entry))
        self._check_unique(names, "the name defaults to the term's type; give each term of the same type its own `name`")
        return terms

    def _native_term(self, entry: Any, path: str) -> TermSpec | None:
        if not isinstance(entry, Mapping):
            self.problems.append((path, f"expected a term table (with `type`), got {describe_value(entry)}"))
            return None
        n_before = len(self.problems)
        if "type" not in entry:
            names = ", ".join(self.registry.names("term"))
            self.problems.append((join_path(path, "type"), f"missing required key (a registered term: {names})"))
            term_type = None
        else:
            try:
                term_type = structure(entry["type"], str, join_path(path, "type"))
            except StructureProblems as exc:
                self._add(exc)
                term_type = None
        record = self._lookup("term", term_type, join_path(path, "type")) if term_type is not None else None

        options = None
        options_ok = False
        if record is not None:
            ok, cls = self._config_cls(record, join_path(path, "type"))
            if ok and cls is not None:
                clash = sorted(set(RESERVED_TERM_KEYS) & {a.alias or a.name for a in attrs.fields(cls) if a.init})
                if clash:
                    self.problems.append((join_path(path, "type"), f"the config class of term {term_type!r} "
                                          f"({cls.__qualname__}) uses reserved key(s) {', '.join(clash)}; "
                                          "the plugin must rename them"))
                else:
                    try:
                        options = structure_attrs(entry, cls, exclude=RESERVED_TERM_KEYS, also_valid=RESERVED_TERM_KEYS)
                        options_ok = True
                    except StructureProblems as exc:
                        self.problems += [(join_path(path, p), m) for p, m in exc.problems]
            elif ok:  # a term without options
                for key in entry:
                    if key not in RESERVED_TERM_KEYS:
                        self.problems.append((join_path(path, str(key)), suggest_key(key, RESERVED_TERM_KEYS) +
                                              f"; term {term_type!r} takes no options"))
                options_ok = True

        common = {k: entry[k] for k in RESERVED_TERM_KEYS if k in entry and k != "type"}
        common.setdefault("name", term_type if term_type is not None else f"<{path}>")
        try:
            spec = structure_attrs(common, TermSpec, provided={"type": term_type or "?", "options": options})
        except StructureProblems as exc:
            self.problems += [(join_path(path, p), m) for p, m in exc.problems]
            spec = None
        if isinstance(entry.get("time_reduce"), str) and entry["time_reduce"].strip() == entry["time_reduce"] != "":
            self._lookup("reducer", entry["time_reduce"], join_path(path, "time_reduce"))
        if options_ok and spec is not None:
            why = _why_nothing(options)
            if why:
                self.problems.append((path, f"term {spec.name!r} {why}"))
        return spec if len(self.problems) == n_before else None

    # -- seed format ---------------------------------------------------------------------------------
    def _seed_terms(self, raw: Any) -> list[TermSpec]:
        if not isinstance(raw, (list, tuple)):
            self.problems.append(("features", f"expected a list of feature tables, got {describe_value(raw)}"))
            return []
        if not raw:
            self.problems.append(("features", "is empty: a config needs at least one feature"))
            return []
        terms: list[TermSpec] = []
        names: list[tuple[str, str, bool]] = []
        for i, entry in enumerate(raw):
            path = join_path("features", i)
            if isinstance(entry, Mapping):
                name = entry.get("term_name", entry.get("src_key"))
                if isinstance(name, str):
                    names.append((join_path(path, "term_name"), name, "term_name" in entry))
            try:
                feature = structure(entry, SeedFeature, path)
            except StructureProblems as exc:
                self._add(exc)
                continue
            why = feature.contributes_why_not()
            if why:
                self.problems.append((path, why))
            record = self._lookup("term", feature.term_type, path)
            if record is None:
                continue
            ok, cls = self._config_cls(record, path)
            if not ok:
                continue
            try:
                options = structure(feature.option_fields(), cls, path) if cls is not None else None
                common = {"name": feature.term_name if feature.term_name is not None else feature.src_key,
                          "weight": feature.term_weight, "time_reduce": feature.time_reduce}
                spec = structure_attrs(common, TermSpec, provided={"type": feature.term_type, "options": options})
            except StructureProblems as exc:
                rename = {"name": "term_name", "weight": "term_weight"}
                self.problems += [(join_path(path, rename.get(p, p)), m) for p, m in exc.problems]
                continue
            if spec.time_reduce is not None:
                self._lookup("reducer", spec.time_reduce, join_path(path, "time_reduce"))
            terms.append(spec)
        self._check_unique(names, "term_name defaults to src_key; give features that share a src_key distinct term_names")
        return terms

    def _check_unique(self, names: list[tuple[str, str, bool]], default_hint: str) -> None:
        first: dict[str, str] = {}
        for path, name, explicit in names:
            if name in first:
                msg = f"duplicate term name {show_value(name)} (also {first[name]}); term names must be unique"
                if not explicit:
                    msg += f" ({default_hint})"
                self.problems.append((path, msg))
            else:
                first[name] = path.rsplit(".", 1)[0]


def _why_nothing(options: Any) -> str | None:
    contributes = getattr(options, "contributes", None)
    if options is None or not callable(contributes):
        return None
    try:
        if contributes():
            return None
    except Exception as exc:  # noqa: BLE001
        return f"cannot tell whether it contributes: contributes() raised {type(exc).__name__}: {exc}"
    parts = []
    if attrs.has(type(options)):
        for a in attrs.fields(type(options)):
            value = getattr(options, a.name)
            if "weight" in a.name or a.name.startswith("use_"):
                parts.append(f"{a.name} = {_fmt(value)}")
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"contributes nothing to the cost{detail}; give it a weight > 0 or remove the term"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    return show_value(value)


# -- dump -------------------------------------------------------------------------------------------------
def dump_config(cfg: OTConfig) -> dict[str, Any]:
    """The native, JSON-able form of ``cfg``; ``load_config(dump_config(cfg)) == cfg``.

    Every setting is written (defaults included), so a checkpoint keeps the exact meaning even if a
    default changes later.
    """
    out: dict[str, Any] = {}
    for name in _SCALARS:
        value = getattr(cfg, name)
        if name in ("tau_src", "tau_tgt") and math.isinf(value):
            continue  # an exact side: written as `marginals` below (JSON has no inf)
        out[name] = value
    if cfg.marginals != "relaxed":
        out["marginals"] = cfg.marginals
    if cfg.solver_options is not None:
        out["solver_options"] = unstructure(cfg.solver_options)
    terms = []
    for term in cfg.terms:
        entry: dict[str, Any] = {"type": term.type, "name": term.name, "weight": term.weight}
        if term.time_reduce is not None:
            entry["time_reduce"] = term.time_reduce
        if term.options is not None:
            entry.update(unstructure(term.options))
        terms.append(entry)
    out["terms"] = terms
    return out


# -- describe ---------------------------------------------------------------------------------------------
def describe_config(cfg: OTConfig) -> str:
    """A readable summary: terms (name, type, keys, slice, weights, time reduce), OT settings and solver."""
    lines = []
    lines.append(f"OT config{f' ({cfg.source})' if cfg.source else ''}: "
                 f"{len(cfg.terms)} term{'s' if len(cfg.terms) != 1 else ''}, M = sum_k weight_k * M_k")
    width = max(len(t.name) for t in cfg.terms)
    for term in cfg.terms:
        reduce = cfg.time_reduce_for(term)
        lines.append(f"  {term.name:<{width}}  type={term.type}  weight={_fmt(term.weight)}  time_reduce={reduce}"
                     f"{'' if term.time_reduce is not None else ' (default)'}")
        opts = _describe_options(term.options)
        if opts:
            lines.append(f"  {'':<{width}}    {opts}")
    lines.append(f"  metrics: {', '.join('ot_cost/' + t.name for t in cfg.terms)}")
    lines.append(f"reg (entropic epsilon): {_fmt(cfg.reg)}")
    if cfg.marginals == "exact":
        lines.append("marginals: exact -- balanced OT (tau_src = tau_tgt = inf)")
    else:
        lines.append(f"tau_src / tau_tgt (KL marginal relaxation): {_fmt(cfg.tau_src)} / {_fmt(cfg.tau_tgt)}"
                     f"{'' if cfg.marginals == 'relaxed' else f' -- marginals: {cfg.marginals} (semi-relaxed OT)'}")
    if cfg.heuristic:
        lines.append("heuristic: true -- diagonal prior c = eye(n)/n: the plan is forced onto the given pairing "
                     "(row i <-> row i, every off-diagonal entry exactly 0); square batches only")
    else:
        lines.append("heuristic: false -- uniform reference measure; the solver finds the pairing")
    opts = _describe_options(cfg.solver_options)
    lines.append(f"solver: {cfg.solver}{f' ({opts})' if opts else ''}")
    lines.append(f"time_reduce: {cfg.time_reduce}   cost_normalization: {cfg.cost_normalization}   "
                 f"term_normalization: {cfg.term_normalization}   on_collapse: {cfg.on_collapse}")
    if cfg.debias:
        lines.append("debias: true -- loss S = OT(a, b) - 1/2 OT(a, a) - 1/2 OT(b, b) (Sinkhorn-divergence style)")
    if any(getattr(t.options, "stopgrad_encoder", None) == "ema" and getattr(t.options, "grad", "both") != "both"
           for t in cfg.terms):
        lines.append(f"ema_decay: {_fmt(cfg.ema_decay)} (EMA target encoder of terms with stopgrad_encoder = 'ema')")
    return "\n".join(lines)


def _describe_options(options: Any) -> str:
    if options is None:
        return ""
    if not attrs.has(type(options)):
        return repr(options)
    parts = []
    fields = {a.name: getattr(options, a.name) for a in attrs.fields(type(options)) if a.init}
    if "src_key" in fields:
        src = fields.pop("src_key")
        tgt = fields.pop("tgt_key", None)
        parts.append(f"{src} -> {tgt if tgt is not None else '(same key)'}")
    defaults = {a.name: a.default for a in attrs.fields(type(options))}
    for name, value in fields.items():
        if value is None or (name in _QUIET_AT_DEFAULT and value == defaults.get(name)):
            continue
        parts.append(f"{name}={_fmt(value)}")
    return "  ".join(parts)


# options of the embedding terms shown only when set (their defaults change nothing)
_QUIET_AT_DEFAULT = frozenset({"grad", "stopgrad_encoder", "variance_floor", "variance_weight", "covariance_weight",
                               "scale_anchor"})
