"""A pytest plugin for plugin authors (auto-loaded through the ``pytest11`` entry point).

The ``otplug_registry`` fixture gives a fresh registry with every installed plugin loaded, installs it as
the process-wide registry for the test, and lets a test register inline plugins::

    class MyTerms:
        @otplug.hookimpl
        def otplug_cost_terms(self):
            return [otplug.CostTerm(name="mine", factory=MyTerm, config_cls=MyConfig, summary="...")]

    def test_mine(otplug_registry):
        otplug_registry.register(MyTerms(), name="my-terms")
        assert "mine" in otplug_registry.names("term")

Everything registered is gone after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otplug.plugins.manager import Registry, reset_registry


@pytest.fixture
def otplug_registry() -> Iterator[Registry]:
    registry = Registry()
    previous = reset_registry(registry)
    try:
        yield registry
    finally:
        reset_registry(previous)
