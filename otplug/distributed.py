"""OT over several processes (torch.distributed; accelerate uses it underneath).

Two scopes:

* ``rank`` (default): each process solves OT on its own pairs -- nothing to do here, call ``OTLoss``.
* ``global``: every process gathers the OT batch values of all processes (raw values detached; encoder
  features with gradients for its **own** rows only), so the plan covers the global batch. Every process
  builds the same global M and solves the same problem (deterministic, no broadcast needed). Raw values
  are sent only for keys some term reads raw (label costs): an embedding-only camera sends its features,
  not its pixels.
  The returned loss is multiplied by ``world_size``: DDP averages gradients over processes, so the
  averaged gradient equals the gradient of the global ``sum(pi * M)`` -- exactly what one process would
  compute on the concatenated batch (tested with 2 processes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from otplug.errors import BatchError, OtplugError
from otplug.features.extract import read_value
from otplug.policy_encoder import encode, resolve_encoder

__all__ = ["all_gather_rows", "global_ot", "scoped_ot", "world"]


def world() -> tuple[int, int]:
    """(rank, world_size), (0, 1) when torch.distributed is not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_rows(x: torch.Tensor) -> list[torch.Tensor]:
    """All processes' tensors (detached), which may differ in their first (batch) dimension only."""
    import torch.distributed as dist

    _, size = world()
    x = x.detach().contiguous()
    counts = _gather_counts(x)
    top = max(counts)
    if x.shape[0] < top:
        pad = torch.zeros((top - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        x = torch.cat([x, pad])
    out = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(out, x)
    return [t[:c] for t, c in zip(out, counts, strict=True)]


class _GlobalEncoder:
    """Encodes this process's rows of ``(side, key)`` with the real encoder and gathers the other processes'
    features (no gradient)."""

    def __init__(self, inner: Any, local: dict[tuple[str, str], torch.Tensor], rank: int) -> None:
        self.inner = inner
        self.local = local
        self.rank = rank

    def encode_side_for_ot(self, side: str, key: str, x: torch.Tensor, *, name: str) -> torch.Tensor:
        local = self.local.get((side, key))
        if local is None:
            raise OtplugError(f"global OT scope: the encoder was asked for {side} {key!r}, which was not gathered; "
                              "terms must encode values read from the batch")
        feats = encode(self.inner, side, key, local, name)
        parts = all_gather_rows(feats)
        parts[self.rank] = feats
        return torch.cat(parts)


def _gather_side(batch: Mapping[str, torch.Tensor], keys: set[str], optional: set[str], raw: set[str], side: str,
                 local: dict[tuple[str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather the values of ``keys`` (and of the ``optional`` keys present, e.g. ``*_is_pad`` masks) from every
    process.

    Keys only seen through the encoder (not in ``raw``) are not sent: the global batch holds a zero-stride
    placeholder of the global shape, and the encoder wrapper encodes the local rows and gathers features.
    """
    wanted = set(keys) | set(optional)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(keys):
        if key not in batch:  # raise before any collective, so no process waits on a gather that never comes
            read_value(batch, key, side)
    for key in sorted(k for k in batch if k in wanted):  # same order on every process
        value = batch[key]
        if not isinstance(value, torch.Tensor):
            raise BatchError(f"global OT scope: {side} batch[{key!r}] must be a tensor, got {type(value).__name__}")
        if key in keys and key not in raw:
            read_value(batch, key, side)  # the checks the placeholder cannot get
            n_global = sum(int(c) for c in _gather_counts(value))
            gathered = value.new_zeros(()).expand(n_global, *value.shape[1:])
        else:
            gathered = torch.cat(all_gather_rows(value))
        out[key] = gathered
        local[(side, key)] = value
    return out


def _gather_counts(x: torch.Tensor) -> list[int]:
    import torch.distributed as dist

    _, size = world()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    return [int(s.item()) for s in sizes]


def global_ot(ot: Any, src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor], encoder: Any = None):
    """``ot(src, tgt, encoder)`` over the concatenation of every process's batch (see module docs)."""
    rank, size = world()
    if size == 1:
        return ot(src, tgt, encoder=encoder)
    local: dict[tuple[str, str], torch.Tensor] = {}
    # every process must gather the same keys in the same order: use the config's keys, not the batch's
    gsrc = _gather_side(src, ot.required_keys("src"), ot.optional_keys("src"), ot.raw_keys("src"), "src", local)
    gtgt = _gather_side(tgt, ot.required_keys("tgt"), ot.optional_keys("tgt"), ot.raw_keys("tgt"), "tgt", local)
    wrapped = None
    if encoder is not None and ot.embedding_keys:
        wrapped = _GlobalEncoder(resolve_encoder(encoder), local, rank)
    res = ot(gsrc, gtgt, encoder=wrapped if wrapped is not None else encoder)
    metrics = dict(res.metrics)
    metrics["ot_global_n_src"] = float(res.cost.shape[0])
    metrics["ot_global_n_tgt"] = float(res.cost.shape[1])
    return attrs.evolve(res, loss=res.loss * size, metrics=metrics)


def scoped_ot(ot: Any, src, tgt, encoder: Any = None, *, scope: str = "rank", ema_encoder: Any = None,
              paired: int | None = None):
    """Dispatch on ``--ot-scope``: ``rank`` (each process alone) or ``global``. ``paired``: the number of paired
    rows in front of a target pool's rows (:meth:`otplug.OTLoss.__call__`), rank scope only."""
    if scope == "rank":
        extra = {k: v for k, v in (("ema_encoder", ema_encoder), ("paired", paired)) if v is not None}
        return ot(src, tgt, encoder=encoder, **extra)
    if paired is not None:
        raise OtplugError("a target pool (--ot.target_pool) works with --ot.scope=rank only")
    if ema_encoder is not None:
        raise OtplugError("an EMA target encoder (stopgrad_encoder = 'ema') works with --ot-scope=rank only")
    if scope == "global":
        return global_ot(ot, src, tgt, encoder=encoder)
    raise OtplugError(f"--ot-scope must be 'rank' or 'global', got {scope!r}")
