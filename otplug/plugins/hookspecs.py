"""The hooks a plugin may implement. Each takes no arguments and returns a list of records.

Keep this module free of heavy imports: it is loaded by ``otplug list-terms``.
"""

from __future__ import annotations

import pluggy

from otplug.plugins.records import AlignmentPolicy, CostTerm, MetricSink, PolicyEncoder, Solver, TimeReducer

PROJECT = "otplug"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "PROJECT",
    "hookimpl",
    "hookspec",
    "otplug_alignment_policies",
    "otplug_cost_terms",
    "otplug_metric_sinks",
    "otplug_policy_encoders",
    "otplug_solvers",
    "otplug_time_reducers",
]


@hookspec
def otplug_cost_terms() -> list[CostTerm]:
    """Return the cost terms this plugin provides (names usable as ``type`` in a config's ``terms``)."""


@hookspec
def otplug_time_reducers() -> list[TimeReducer]:
    """Return time-reduce strategies (names usable as ``time_reduce``)."""


@hookspec
def otplug_solvers() -> list[Solver]:
    """Return OT solvers (names usable as ``solver``)."""


@hookspec
def otplug_alignment_policies() -> list[AlignmentPolicy]:
    """Return cross-dataloader alignment policies (names usable as ``alignment``)."""


@hookspec
def otplug_metric_sinks() -> list[MetricSink]:
    """Return metric sinks (names usable in ``sinks``)."""


@hookspec
def otplug_policy_encoders() -> list[PolicyEncoder]:
    """Return encoder adapters keyed by lerobot policy type (``policy.config.type``)."""
