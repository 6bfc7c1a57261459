"""``embedding``: ``M = weight_embed * cdist(enc(src), enc(tgt))**2 + weight_label * cdist(src, tgt)**2``.

The embedding part carries gradients into the policy's encoder; ``dim_slice`` applies to the raw (label)
values only, because the encoder needs its native input.

Options against scale collapse (``docs/math.md``, "Scale collapse and the options against it"):
``embed_norm = "l2"`` (unit-length features, gradient through the normalisation), ``grad`` /
``stopgrad_encoder`` (one side's features are a constant: detached, or from an EMA copy of the policy), and
``variance_floor`` / ``covariance_weight`` (a VICReg-style regulariser added to the loss), and ``scale_anchor``
(a penalty on the drift of the features' mean squared norm from its value at the first call; the reference is
the term's state: :meth:`EmbeddingTerm.state_dict`, saved with each checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from otplug.terms.base import TermContext, TermCost
from otplug.terms.configs import EmbeddingConfig
from otplug.terms.regularize import cov_offdiag, var_hinge


class EmbeddingTerm:
    uses_encoder = True

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self._scale_ref: float | None = None  # scale_anchor's reference s0 (set at the first call)

    # -- state (scale_anchor's reference) --------------------------------------------------------------
    def state_dict(self) -> dict[str, float]:
        return {} if self._scale_ref is None else {"scale_ref": self._scale_ref}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        ref = state.get("scale_ref")
        self._scale_ref = None if ref is None else float(ref)

    def required_keys(self, side: str) -> set[str]:
        return {self.config.src_key if side == "src" else self.config.target_key}

    def raw_keys(self, side: str) -> set[str]:
        """Keys whose raw values this term reads (the label part); embedding-only terms need none."""
        return self.required_keys(side) if self.config.weight_label > 0 or not self._learned() else set()

    def embedding_keys(self) -> set[str]:
        return {self.config.src_key, self.config.target_key} if self._learned() else set()

    def uses_ema_encoder(self) -> bool:
        """Whether the loss needs ``ema_encoder`` (``stopgrad_encoder = "ema"``)."""
        return self._learned() and self.config.uses_ema()

    def _learned(self) -> bool:
        return self.config.weight_embed > 0

    # -- features ----------------------------------------------------------------------------------------
    def _raw_embedding(self, batch: Mapping[str, torch.Tensor], side: str, ctx: TermContext) -> torch.Tensor:
        """The encoder features of ``side``: with gradients, or a constant on the side ``grad`` excludes
        (the policy's features detached, or the EMA encoder's)."""
        c = self.config
        key = c.src_key if side == "src" else c.target_key
        if not c.frozen_side(side):
            return ctx.embed(batch, key, side, embed_name=c.embed_name)
        if c.stopgrad_encoder == "ema":
            return ctx.embed(batch, key, side, embed_name=c.embed_name, encoder="ema").detach()
        return ctx.embed(batch, key, side, embed_name=c.embed_name).detach()

    def _compared(self, f: torch.Tensor) -> torch.Tensor:
        """The features the cost compares: unit length with ``embed_norm = "l2"`` (gradient through the norm)."""
        if self.config.embed_norm == "l2":
            return torch.nn.functional.normalize(f, dim=-1)
        return f

    def _label(self, batch: Mapping[str, torch.Tensor], side: str, ctx: TermContext) -> torch.Tensor:
        c = self.config
        return ctx.label(batch, c.src_key if side == "src" else c.target_key, side, dim_slice=c.dim_slice)

    def _combine(self, m_embed: torch.Tensor | None, m_label: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        total = None if m_embed is None else c.weight_embed * m_embed
        if m_label is not None:
            weighted = c.weight_label * m_label
            total = weighted if total is None else total + weighted.to(total.dtype)
        return total

    # -- costs -------------------------------------------------------------------------------------------
    def cost(self, src, tgt, ctx: TermContext) -> TermCost:
        c = self.config
        parts: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        penalties: dict[str, torch.Tensor] = {}
        m_embed = m_label = None
        if self._learned():
            x = self._raw_embedding(src, "src", ctx)
            y = self._raw_embedding(tgt, "tgt", ctx)
            with torch.no_grad():  # watch for scale collapse: OT alone rewards shrinking every feature
                stats["embed_scale"] = float(torch.cat([x, y.to(x.dtype)]).pow(2).sum(-1).mean())
            if c.scale_anchor > 0:
                penalties["scale_anchor"], stats["scale_drift"] = self._anchor(x, y)
            x, y = self._compared(x), self._compared(y)
            m_embed = self._distance(ctx.sq_dist(x, y, what=f"embedding {c.src_key!r}/{c.target_key!r}"))
            parts["embed"] = m_embed
            if c.variance_floor > 0 or c.covariance_weight > 0:
                z = torch.cat([x, y.to(x.dtype)])
                if c.variance_floor > 0:
                    hinge = var_hinge(z, c.variance_floor)
                    stats["var_reg"] = float(hinge.detach())
                    penalties["var_reg"] = c.variance_weight * hinge
                if c.covariance_weight > 0:
                    cov = cov_offdiag(z)
                    stats["cov_reg"] = float(cov.detach())
                    penalties["cov_reg"] = c.covariance_weight * cov
        if c.weight_label > 0:
            m_label = ctx.sq_dist(self._label(src, "src", ctx), self._label(tgt, "tgt", ctx),
                                  what=f"label {c.src_key!r}/{c.target_key!r}")
            parts["label"] = m_label
        return TermCost(self._combine(m_embed, m_label), parts, stats, penalties)

    def _distance(self, sq: torch.Tensor) -> torch.Tensor:
        """The embedding cost from squared distances: as is (``distance = "sqeuclidean"``) or their square root
        (``"euclidean"``: the energy distance's kernel), with a zero gradient at distance 0, not an infinite one."""
        if self.config.distance == "euclidean":
            return sq.clamp_min(1e-30).sqrt()
        return sq

    def _anchor(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``scale_anchor * log(s / s0)^2`` and ``s / s0``; ``s`` the mean squared norm of src and tgt features
        (with gradients where the side has them), ``s0`` its first value."""
        s = torch.cat([x, y.to(x.dtype)]).pow(2).sum(-1).mean()
        if self._scale_ref is None:
            ref = float(s.detach())
            if not (ref > 0 and math.isfinite(ref)):
                return s.new_zeros(()), 1.0  # nothing to anchor to yet (all-zero or non-finite features)
            self._scale_ref = ref
        drift = torch.log(s.clamp_min(1e-30)) - math.log(self._scale_ref)
        return self.config.scale_anchor * drift.pow(2), float(drift.detach().exp())

    def within_cost(self, batch, side: str, ctx: TermContext) -> TermCost:
        """The same cost between the samples of one side, (n, n) (for ``debias = true``): the side's features
        as :meth:`cost` sees them (same gradient / EMA choice, same normalisation)."""
        c = self.config
        parts: dict[str, torch.Tensor] = {}
        m_embed = m_label = None
        if self._learned():
            key = c.src_key if side == "src" else c.target_key
            f = self._compared(self._raw_embedding(batch, side, ctx))
            m_embed = self._distance(ctx.sq_dist(f, f, what=f"embedding {key!r}"))
            parts["embed"] = m_embed
        if c.weight_label > 0:
            f = self._label(batch, side, ctx)
            m_label = ctx.sq_dist(f, f, what="label")
            parts["label"] = m_label
        return TermCost(self._combine(m_embed, m_label), parts)
