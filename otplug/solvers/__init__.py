"""Entropic OT solvers used by ``OTLoss``: KL-unbalanced (the default) and balanced Sinkhorn.

Every solver solves, for a cost ``M`` (n x m), marginals ``a``, ``b``, entropic ``reg`` and marginal
relaxations ``reg_m = (tau_src, tau_tgt)``, POT's problem (``ot.unbalanced.sinkhorn_knopp_unbalanced``
with ``reg_type="kl"``)::

    pi = argmin_{pi >= 0} <pi, M> + reg KL(pi | c) + tau_src KL(pi 1 | a) + tau_tgt KL(pi^T 1 | b)

with ``c = a b^T`` (or ``eye(n)/n`` for the diagonal prior, ``heuristic=True``); the balanced solvers its
``tau = inf`` limit (``otplug.solvers.problems`` states every problem a solver may declare). Importing this package
does not import torch or POT; the solver modules do.
"""

from otplug.solvers.configs import PotBalancedConfig, PotConfig, SinkhornConfig

__all__ = ["PotBalancedConfig", "PotConfig", "SinkhornConfig"]
