"""otplug: Optimal-Transport alignment losses for co-training LeRobot policies on sim and real data.

``import otplug`` is light (no torch/POT); the heavy parts load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otplug.errors import (
    BatchError,
    ConfigError,
    DuplicateComponentError,
    OtplugError,
    PluginError,
    PluginLoadError,
    UnknownComponentError,
)
from otplug.plugins import (
    AlignmentPolicy,
    CostTerm,
    MetricSink,
    PolicyEncoder,
    Solver,
    TimeReducer,
    get_registry,
    hookimpl,
)

__version__ = "0.1.0"

__all__ = [
    "AlignmentPolicy",
    "BatchError",
    "ConfigError",
    "CostTerm",
    "DuplicateComponentError",
    "EMAEncoder",
    "MetricSink",
    "OTCollapseWarning",
    "OTConfig",
    "OTLoss",
    "OTResult",
    "OTSolverWarning",
    "OtplugError",
    "PlanCheck",
    "PluginError",
    "PluginLoadError",
    "PolicyEncoder",
    "SolveResult",
    "Solver",
    "TermContext",
    "TermCost",
    "TimeReducer",
    "UnknownComponentError",
    "get_registry",
    "hookimpl",
    "load_config",
    "validators",
]

_LAZY = {
    "load_config": "otplug.config",
    "OTConfig": "otplug.config",
    "OTLoss": "otplug.loss",
    "OTResult": "otplug.loss",
    "OTSolverWarning": "otplug.loss",
    "OTCollapseWarning": "otplug.loss",
    "EMAEncoder": "otplug.ema",
    "PlanCheck": "otplug.solvers.problems",
    # the types a plugin's component returns or receives (docs/plugins.md)
    "SolveResult": "otplug.solvers.base",
    "TermContext": "otplug.terms.base",
    "TermCost": "otplug.terms.base",
}

if TYPE_CHECKING:
    from otplug.config import OTConfig, load_config
    from otplug.ema import EMAEncoder
    from otplug.loss import OTCollapseWarning, OTLoss, OTResult, OTSolverWarning
    from otplug.solvers.problems import PlanCheck
    from otplug.solvers.base import SolveResult
    from otplug.terms.base import TermContext, TermCost


def __getattr__(name: str) -> Any:
    if name == "validators":  # the shared attrs validators for config classes (plugins too): a submodule
        import importlib

        return importlib.import_module("otplug.validators")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'otplug' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
