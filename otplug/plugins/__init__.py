"""The plugin layer: hook specs, the records hooks return, and the cached registry."""

from otplug.plugins.hookspecs import hookimpl, hookspec
from otplug.plugins.manager import ENTRY_POINT_GROUP, Registry, get_registry, reset_registry
from otplug.plugins.records import (
    AlignmentPolicy,
    CostTerm,
    MetricSink,
    PolicyEncoder,
    Record,
    Solver,
    TimeReducer,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "AlignmentPolicy",
    "CostTerm",
    "MetricSink",
    "PolicyEncoder",
    "Record",
    "Registry",
    "Solver",
    "TimeReducer",
    "get_registry",
    "hookimpl",
    "hookspec",
    "reset_registry",
]
