"""Config classes of the built-in solvers (torch- and POT-free: the config loader imports this module).

Every field is validated when the config is built; messages are phrased for users (the config loader
prefixes them with the path to the field). See ``docs/solvers.md`` for what each option does.
"""

from __future__ import annotations

from typing import Literal

import attrs

from otplug import validators as v

__all__ = ["DTYPES", "POT_BALANCED_METHODS", "PotBalancedConfig", "PotConfig", "SinkhornConfig"]

DTYPES = ("auto", "float32", "float64")
POT_BALANCED_METHODS = ("sinkhorn", "sinkhorn_log")


_open_unit = v.in_range(0, 1, low_open=True, high_open=True)


@attrs.frozen(kw_only=True)
class PotConfig:
    """Options of the reference solvers ``pot`` and ``pot-torch`` (POT's own names in brackets).

    ``max_iter`` (``numItermax``): iteration cap, POT's default 1000.
    ``tol`` (``stopThr``): POT's stopping threshold on the relative change of the scalings, default 1e-6.
    """

    max_iter: int = attrs.field(default=1000, validator=v.positive_int)
    tol: float = attrs.field(default=1e-6, validator=v.positive)


@attrs.frozen(kw_only=True)
class PotBalancedConfig:
    """Options of ``pot-balanced`` (POT's ``ot.sinkhorn``; POT's names and defaults in brackets).

    ``max_iter`` (``numItermax``): iteration cap, default 1000.
    ``tol`` (``stopThr``): POT stops when the marginal violation is below this, default 1e-9.
    ``method``: ``"sinkhorn"`` (POT's default kernel iteration; underflows when ``M / reg`` exceeds ~700) or
      ``"sinkhorn_log"`` (POT's log-domain iteration).
    """

    max_iter: int = attrs.field(default=1000, validator=v.positive_int)
    tol: float = attrs.field(default=1e-9, validator=v.positive)
    method: Literal["sinkhorn", "sinkhorn_log"] = attrs.field(default="sinkhorn",
                                                             validator=v.one_of(POT_BALANCED_METHODS))


@attrs.frozen(kw_only=True)
class SinkhornConfig:
    """Options of the default on-device solver ``sinkhorn`` (``otplug.solvers.sinkhorn``).

    ``max_iter``: cap on Sinkhorn iterations, epsilon-scaling stages included (default 5000).
    ``tol``: stop when the estimated distance of the log-scalings to the fixed point (the relative error of
      every row and column of the plan) is below this (default 1e-7).
    ``check_every``: test convergence every this many iterations (one host sync per test; default 10).
    ``warm_start``: start from the previous call's potentials when the shapes match (default true).
    ``eps_scaling``: on a cold start, solve a short sequence of larger regs first, from the cost's range down
      to ``reg`` (default false: over-relaxation already removes the small-``reg`` slowdown; measured slower).
    ``eps_scaling_factor``: ratio between consecutive epsilon-scaling regs (default 0.5).
    ``translation``: after each iteration, shift the dual potentials by the optimal constant
      (translation-invariant Sinkhorn; default false: it rarely saves enough iterations to pay for itself).
    ``overrelaxation``: over-relaxed Sinkhorn in the final stage; the factor ``omega`` in [1, 1.95] is tuned from
      the measured convergence rate and backed off when the error grows (default true).
    ``kernel_iterations``: once the potentials have settled, iterate with an absorbed (stabilised) kernel and
      matrix-vector products instead of log-sum-exp (much faster, same fixed point; default true).
    ``dtype``: working precision. ``auto`` uses float64 for float64 costs and for float32 costs whose range
      is too large against ``reg`` for float32 log-potentials, float32 otherwise (default ``auto``).
    """

    max_iter: int = attrs.field(default=5000, validator=v.positive_int)
    tol: float = attrs.field(default=1e-7, validator=v.positive)
    check_every: int = attrs.field(default=10, validator=v.positive_int)
    warm_start: bool = attrs.field(default=True, validator=v.boolean)
    eps_scaling: bool = attrs.field(default=False, validator=v.boolean)
    eps_scaling_factor: float = attrs.field(default=0.5, validator=_open_unit)
    translation: bool = attrs.field(default=False, validator=v.boolean)
    overrelaxation: bool = attrs.field(default=True, validator=v.boolean)
    kernel_iterations: bool = attrs.field(default=True, validator=v.boolean)
    dtype: Literal["auto", "float32", "float64"] = attrs.field(default="auto", validator=v.one_of(DTYPES))
