"""The registry: one cached, fault-isolating loader of ``otplug`` entry points, over pluggy.

The CLI, the config loader and the Python API all go through :func:`get_registry`. Each entry point is
loaded on its own; a plugin that fails to import, implements a misspelled hook, or whose hook raises is
recorded as a :class:`LoadFailure` and everything else keeps working.

Environment switches (read when the registry is first built):

* ``OTPLUG_STRICT_PLUGINS=1`` -- any load failure raises :class:`~otplug.errors.PluginLoadError`.
* ``OTPLUG_DISABLE_PLUGINS=a,b`` -- skip these entry-point or distribution names.
* ``OTPLUG_PLUGINS=a,b`` -- load only these third-party entry points/distributions (built-ins still load
  unless disabled explicitly).
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import os
import threading
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from otplug.errors import DuplicateComponentError, PluginLoadError, UnknownComponentError
from otplug.plugins import hookspecs
from otplug.plugins.records import RECORD_TYPES, Record

__all__ = [
    "ENTRY_POINT_GROUP",
    "LoadFailure",
    "PluginInfo",
    "Provided",
    "Registry",
    "get_registry",
    "reset_registry",
]

ENTRY_POINT_GROUP = "otplug"
BUILTIN_DIST = "otplug"
KINDS: dict[str, type[Record]] = {cls.kind: cls for cls in RECORD_TYPES}
HOOK_NAMES = frozenset(cls.hook for cls in RECORD_TYPES)


@attrs.frozen
class LoadFailure:
    plugin: str
    dist: str | None
    entry_point: str | None
    error: str

    def line(self) -> str:
        where = f"distribution {self.dist!r}, " if self.dist else ""
        ep = f"entry point {self.entry_point!r}" if self.entry_point else f"plugin {self.plugin!r}"
        return f"otplug plugin failed to load ({where}{ep}): {self.error}"


@attrs.frozen
class PluginInfo:
    name: str
    dist: str | None
    version: str | None
    entry_point: str | None
    hooks: tuple[str, ...]
    builtin: bool


@attrs.frozen
class Provided:
    """A record with its provenance."""

    record: Record
    plugin: str
    dist: str | None
    version: str | None

    def load(self) -> Any:
        """The component's factory, imported now; import errors name the component and its plugin."""
        return self._resolve("factory", self.record.load_factory)

    def load_config_cls(self) -> Any:
        return self._resolve("config_cls", self.record.load_config_cls)

    def _resolve(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 -- a plugin's lazy import failing
            target = getattr(self.record, what)
            raise PluginLoadError(
                f"{self.record.kind} {self.record.name!r} from {self.provider}: cannot load its {what} "
                f"{target!r}: {type(exc).__name__}: {exc}"
            ) from exc

    @property
    def provider(self) -> str:
        if self.dist:
            return f"{self.plugin} ({self.dist} {self.version or '?'})"
        return self.plugin


def _env_list(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """All components of all loaded plugins, by kind and name."""

    def __init__(self, *, load_entry_points: bool = True, strict: bool | None = None) -> None:
        self.strict = _truthy("OTPLUG_STRICT_PLUGINS") if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[LoadFailure] = []
        self._dist_of: dict[str, tuple[str | None, str | None, str | None]] = {}
        self._lock = threading.RLock()
        self._components: dict[str, dict[str, list[Provided]]] | None = None
        if load_entry_points:
            self._load_entry_points()

    # -- loading -------------------------------------------------------------------------------------
    def _fail(self, failure: LoadFailure) -> None:
        self.failures.append(failure)
        if self.strict:
            raise PluginLoadError(failure.line() + "  (OTPLUG_STRICT_PLUGINS=1 makes this fatal)")

    def _load_entry_points(self) -> None:
        disabled = _env_list("OTPLUG_DISABLE_PLUGINS")
        allowed = _env_list("OTPLUG_PLUGINS")
        eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        for ep in eps:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            builtin = dist_name == BUILTIN_DIST
            if ep.name in disabled or (dist_name and dist_name in disabled):
                continue
            if allowed and not builtin and ep.name not in allowed and dist_name not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                continue  # the same entry point seen twice (e.g. an editable install shadowing a wheel)
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 -- isolate every plugin
                self._fail(LoadFailure(ep.name, dist_name, ep.value, f"{type(exc).__name__}: {exc}"))
                continue
            self.register(plugin, name=ep.name, dist=dist_name, version=version, entry_point=ep.value)

    def register(
        self,
        plugin: Any,
        name: str | None = None,
        *,
        dist: str | None = None,
        version: str | None = None,
        entry_point: str | None = None,
    ) -> str | None:
        """Register a plugin object (module, class or instance with ``@hookimpl`` functions).

        Returns the plugin name, or ``None`` if it was rejected (the reason is in :attr:`failures`).
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        problem = self._check_hook_names(plugin)
        if problem is None:
            try:
                self.pm.register(plugin, name=name)
            except Exception as exc:  # noqa: BLE001 -- pluggy validation (bad signature, duplicate name)
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            self._fail(LoadFailure(name, dist, entry_point, problem))
            return None
        with self._lock:
            self._dist_of[name] = (dist, version, entry_point)
            self._components = None
        return name

    def unregister(self, name: str) -> None:
        with self._lock:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._dist_of.pop(name, None)
            self._components = None

    @staticmethod
    def _check_hook_names(plugin: Any) -> str | None:
        """Catch misspelled or unmarked hook implementations now, naming the plugin."""
        marker = hookspecs.PROJECT + "_impl"
        for attr in dir(plugin):
            try:
                obj = getattr(plugin, attr)
            except Exception:  # noqa: BLE001
                continue
            marked = callable(obj) and hasattr(obj, marker)
            looks_like_hook = attr.startswith("otplug_") and callable(obj)
            if not (marked or looks_like_hook):
                continue
            if attr not in HOOK_NAMES:
                if not marked and not inspect.isfunction(obj) and not inspect.ismethod(obj):
                    continue
                close = difflib.get_close_matches(attr, sorted(HOOK_NAMES), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known hooks: {', '.join(sorted(HOOK_NAMES))}"
                return f"unknown hook implementation {attr!r}{hint}"
            if not marked:
                return f"{attr!r} is not decorated with @otplug.hookimpl, so it would be ignored"
        return None

    # -- collecting ----------------------------------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, list[Provided]]]:
        with self._lock:
            if self._components is not None:
                return self._components
            table: dict[str, dict[str, list[Provided]]] = {kind: {} for kind in KINDS}
            for cls in RECORD_TYPES:
                caller = getattr(self.pm.hook, cls.hook)
                for impl in caller.get_hookimpls():
                    dist, version, entry_point = self._dist_of.get(impl.plugin_name, (None, None, None))
                    try:
                        result = impl.function()
                        records = self._check_records(result, cls)
                    except Exception as exc:  # noqa: BLE001 -- isolate every hook
                        self._fail(
                            LoadFailure(impl.plugin_name, dist, entry_point, f"hook {cls.hook}() raised {type(exc).__name__}: {exc}")
                        )
                        continue
                    for rec in records:
                        entries = table[cls.kind].setdefault(rec.name, [])
                        if any(p.record.same_as(rec) for p in entries):
                            continue
                        entries.append(Provided(rec, impl.plugin_name, dist, version))
            self._components = table
            return table

    @staticmethod
    def _check_records(result: Any, cls: type[Record]) -> list[Record]:
        if result is None:
            return []
        if isinstance(result, Record):
            result = [result]
        if not isinstance(result, Iterable) or isinstance(result, (str, bytes)):
            raise TypeError(f"must return a list of otplug.{cls.__name__} records, got {type(result).__name__}")
        records = list(result)
        for rec in records:
            if not isinstance(rec, cls):
                raise TypeError(f"must return otplug.{cls.__name__} records, got {type(rec).__name__}: {rec!r}")
        return records

    # -- queries -------------------------------------------------------------------------------------
    def components(self, kind: str) -> list[Provided]:
        """Every component of ``kind`` (conflicting duplicates included), sorted by name."""
        table = self._collect()[self._kind(kind)]
        return [p for name in sorted(table) for p in table[name]]

    def names(self, kind: str) -> list[str]:
        return sorted(self._collect()[self._kind(kind)])

    def conflicts(self) -> list[tuple[str, str, list[Provided]]]:
        return [
            (kind, name, entries)
            for kind, table in self._collect().items()
            for name, entries in sorted(table.items())
            if len(entries) > 1
        ]

    def get(self, kind: str, name: str, *, field: str | None = None) -> Provided:
        """The component ``name`` of ``kind``; raises with suggestions or with both providers."""
        kind = self._kind(kind)
        table = self._collect()[kind]
        entries = table.get(name)
        where = f"{field}: " if field else ""
        if not entries:
            shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
            msg = f"{where}unknown {kind} {shown}"
            close = difflib.get_close_matches(str(name)[:200], list(table), n=3, cutoff=0.5)
            if close:
                msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
            msg += f" (registered {kind}s: {', '.join(sorted(table)) or 'none'})"
            if self.failures:
                msg += "; plugins that failed to load: " + ", ".join(sorted({f.plugin for f in self.failures}))
            raise UnknownComponentError(msg)
        if len(entries) > 1:
            providers = " and ".join(p.provider for p in entries)
            raise DuplicateComponentError(
                f"{where}{kind} {name!r} is registered by more than one plugin: {providers}; "
                "uninstall one or disable it with OTPLUG_DISABLE_PLUGINS"
            )
        return entries[0]

    def plugins(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda kv: kv[0]):
            dist, version, entry_point = self._dist_of.get(name, (None, None, None))
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or []))
            infos.append(PluginInfo(name, dist, version, entry_point, hooks, dist == BUILTIN_DIST))
        return infos

    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        return kind


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = Registry()
        return _REGISTRY


def reset_registry(registry: Registry | None = None) -> Registry | None:
    """Replace the process-wide registry (``None``: rebuild on next use). Returns the previous one."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        previous, _REGISTRY = _REGISTRY, registry
        return previous
