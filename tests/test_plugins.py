"""The registry: entry-point loading, isolation of broken plugins, duplicates, unknown names, hook names."""

from __future__ import annotations

import attrs
import pytest

import otplug
from otplug.errors import DuplicateComponentError, PluginLoadError, UnknownComponentError
from otplug.plugins import Registry, get_registry

from plugin_fixtures import activate, make_dist

GOOD = """
import otplug

@otplug.hookimpl
def otplug_cost_terms():
    return [otplug.CostTerm(name="fake-term", factory="fake_otplug_good:Term", summary="a fake term")]

class Term:
    def __init__(self, options):
        self.options = options
"""


def test_builtins_come_through_entry_points():
    reg = Registry()
    terms = {p.record.name: p for p in reg.components("term")}
    assert {"embedding", "label", "image", "action-slice"} <= set(terms)
    assert terms["label"].dist == "otplug" and terms["label"].plugin == "builtin-terms"
    assert {"flatten", "first", "last", "mean"} <= set(reg.names("reducer"))
    assert {"sinkhorn", "pot", "pot-torch"} <= set(reg.names("solver"))
    assert {"act", "diffusion"} <= set(reg.names("encoder"))
    builtin = [i for i in reg.plugins() if i.builtin]
    assert {i.name for i in builtin} >= {"builtin-terms", "builtin-solvers"}
    assert not reg.failures


def test_example_plugin_through_its_real_entry_point():
    reg = Registry()
    cosine = reg.get("term", "cosine")
    assert cosine.dist == "otplug-cosine" and cosine.version == "0.1.0"
    cls = cosine.record.load_config_cls()
    assert attrs.has(cls)


def test_third_party_entry_point_is_loaded(tmp_path, monkeypatch):
    make_dist(tmp_path, "fake-good", "1.2.3", {"fake-good": "fake_otplug_good"}, {"fake_otplug_good": GOOD})
    activate(tmp_path, monkeypatch)
    reg = Registry()
    p = reg.get("term", "fake-term")
    assert (p.plugin, p.dist, p.version) == ("fake-good", "fake-good", "1.2.3")
    assert p.record.load_factory().__name__ == "Term"


def test_broken_plugin_is_isolated_and_reported(tmp_path, monkeypatch):
    make_dist(tmp_path, "fake-broken", "0.1", {"fake-broken": "fake_otplug_broken"},
              {"fake_otplug_broken": "raise ImportError('missing dependency foo')\n"})
    make_dist(tmp_path, "fake-good", "1.0", {"fake-good": "fake_otplug_good"}, {"fake_otplug_good": GOOD})
    activate(tmp_path, monkeypatch)
    reg = Registry()
    assert "fake-term" in reg.names("term") and "label" in reg.names("term")
    (failure,) = reg.failures
    line = failure.line()
    assert "fake-broken" in line and "fake_otplug_broken" in line and "missing dependency foo" in line
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("term", "lable")
    msg = str(exc.value)
    assert "'label'" in msg and "fake-broken" in msg


def test_strict_switch_makes_failures_fatal(tmp_path, monkeypatch):
    make_dist(tmp_path, "fake-broken", "0.1", {"fake-broken": "fake_otplug_broken"},
              {"fake_otplug_broken": "raise RuntimeError('boom')\n"})
    activate(tmp_path, monkeypatch)
    monkeypatch.setenv("OTPLUG_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="fake-broken.*boom"):
        Registry()


def test_raising_hook_is_isolated(otplug_registry):
    class Bad:
        @otplug.hookimpl
        def otplug_solvers(self):
            raise ValueError("cannot build")

    otplug_registry.register(Bad(), name="bad-solvers")
    assert "sinkhorn" in otplug_registry.names("solver")
    assert any("bad-solvers" in f.line() and "cannot build" in f.line() for f in otplug_registry.failures)


def test_wrong_record_type_is_a_failure(otplug_registry):
    class Wrong:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.Solver(name="x", factory=object)]

    otplug_registry.register(Wrong(), name="wrong")
    otplug_registry.names("term")
    assert any("CostTerm" in f.error for f in otplug_registry.failures)


def test_disable_and_allow_list(tmp_path, monkeypatch):
    make_dist(tmp_path, "fake-good", "1.0", {"fake-good": "fake_otplug_good"}, {"fake_otplug_good": GOOD})
    activate(tmp_path, monkeypatch)
    monkeypatch.setenv("OTPLUG_DISABLE_PLUGINS", "fake-good")
    assert "fake-term" not in Registry().names("term")
    monkeypatch.delenv("OTPLUG_DISABLE_PLUGINS")
    monkeypatch.setenv("OTPLUG_PLUGINS", "cosine")
    reg = Registry()
    names = reg.names("term")
    assert "cosine" in names and "label" in names and "fake-term" not in names


def test_duplicate_names_name_both_providers(otplug_registry):
    class Dup:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="label", factory="somewhere:Else", summary="mine")]

    otplug_registry.register(Dup(), name="dup-plugin")
    with pytest.raises(DuplicateComponentError) as exc:
        otplug_registry.get("term", "label")
    assert "dup-plugin" in str(exc.value) and "builtin-terms" in str(exc.value)


def test_identical_reregistration_is_fine(otplug_registry):
    rec = otplug.CostTerm(name="same", factory="mod:Same", summary="s")

    class A:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [rec]

    class B:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="same", factory="mod:Same", summary="s")]

    otplug_registry.register(A(), name="a")
    otplug_registry.register(B(), name="b")
    assert otplug_registry.get("term", "same").plugin in {"a", "b"}


@pytest.mark.parametrize("attr", ["otplug_cost_term", "otplug_solver", "otplug_terms"])
def test_misspelled_hook_is_caught_with_plugin_named(otplug_registry, attr):
    ns = {attr: otplug.hookimpl(lambda: [])}
    plugin = type("Typo", (), {k: staticmethod(v) for k, v in ns.items()})
    assert otplug_registry.register(plugin, name="typo-plugin") is None
    (failure,) = otplug_registry.failures
    assert failure.plugin == "typo-plugin" and attr in failure.error


def test_unmarked_hook_is_caught(otplug_registry):
    class Unmarked:
        def otplug_cost_terms(self):
            return []

    assert otplug_registry.register(Unmarked(), name="unmarked") is None
    assert "hookimpl" in otplug_registry.failures[0].error


def test_fixture_installs_and_restores_the_global_registry(otplug_registry):
    assert get_registry() is otplug_registry


def test_record_validation():
    with pytest.raises(ValueError):
        otplug.CostTerm(name="has space", factory=object)
    with pytest.raises(ValueError):
        otplug.CostTerm(name="", factory=object)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown component kind"):
        Registry(load_entry_points=False).names("terms")
