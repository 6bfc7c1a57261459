"""VICReg-style variance and covariance regularisers on a batch of embeddings (Bardes et al., 2022).

For ``Z`` (N, d) -- the src and tgt embeddings of a term stacked -- with column means removed (``Zc``)::

    std_j = sqrt(Var(z_j) + VAR_EPS)                       (unbiased variance over the N rows)
    var_hinge(Z) = (1/d) sum_j max(0, gamma - std_j)
    C = Zc^T Zc / (N - 1)
    cov_offdiag(Z) = (1/d) sum_{i != j} C_ij^2

Both carry gradients into Z. ``cov_offdiag`` never builds the (d, d) matrix when d > N: ``||C||_F^2 =
||Zc Zc^T||_F^2 / (N-1)^2`` (the N x N Gram matrix has the same non-zero spectrum), so flattened image
embeddings with 10^5 dimensions cost O(N^2 d).
"""

from __future__ import annotations

import torch

from otplug.errors import BatchError

__all__ = ["VAR_EPS", "cov_offdiag", "var_hinge"]

#: added to the variance before the square root (VICReg's value): keeps the gradient of std finite when a
#: dimension has collapsed; a fully collapsed dimension therefore has std = sqrt(VAR_EPS) = 0.01
VAR_EPS = 1e-4


def _rows(z: torch.Tensor, what: str) -> torch.Tensor:
    if z.ndim != 2:
        raise ValueError(f"{what}: expected (N, d) embeddings, got shape {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise BatchError(f"{what}: a variance needs at least 2 samples (src + tgt rows), got {z.shape[0]}")
    return z


def var_hinge(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """``mean_j max(0, gamma - sqrt(Var(z_j) + VAR_EPS))``: 0 when every dimension's std is >= gamma."""
    z = _rows(z, "variance_floor")
    std = torch.sqrt(z.var(dim=0, unbiased=True) + VAR_EPS)
    return torch.relu(gamma - std).mean()


def cov_offdiag(z: torch.Tensor) -> torch.Tensor:
    """``(1/d) sum_{i != j} C_ij^2`` with ``C`` the (unbiased) covariance of the columns of ``z``."""
    z = _rows(z, "covariance_weight")
    n, d = z.shape
    zc = z - z.mean(dim=0, keepdim=True)
    var = zc.pow(2).sum(0) / (n - 1)  # diag(C)
    if d <= n:
        cov = zc.T @ zc / (n - 1)
        frob = cov.pow(2).sum()
    else:
        gram = zc @ zc.T / (n - 1)
        frob = gram.pow(2).sum()
    return (frob - var.pow(2).sum()).clamp_min(0.0) / d
