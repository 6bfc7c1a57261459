"""``joint``: DeepJDOT's joint-distribution cost adapted to policies -- a term that needs no target actions.

DeepJDOT (Damodaran et al., ECCV 2018) and JUMBOT (Fatras et al., ICML 2021) align the joint distributions of
(features, label): the cost between a source sample ``i`` and a target sample ``j`` is a feature distance plus a
label loss between the source label ``y_i^s`` and the model's *prediction* on the target sample ``f(x_j^t)``, with the
gradient of ``sum(pi * M)`` flowing into the model through both. For a policy the label is an action chunk:

    M_ij = weight_embed * |g(x_i^s) - g(x_j^t)|^2  +  weight_label * sum_t v_it |a_i^s[t] - f(x_j^t)[t]|^2

``g`` the policy's encoder features (as the ``embedding`` / ``image`` terms), ``a_i^s`` the source row's action chunk
(detached; ``v_it`` its valid steps, from ``<action_key>_is_pad``), ``f(x_j^t)`` the action chunk the policy predicts on
the target row's observation (the encoder contract's ``predict_action_for_ot(batch)``: ACT's is one differentiable
forward with the VAE latent at its prior; docs/plugins.md). The target row's own actions are never read: a target
pool of frames without demonstrations works the same. The plan transports each real frame onto sim frames that look
alike *and* whose actions the policy would take there; ``sum(pi * M)`` then trains the policy to take, on the real
frame, the actions of its sim partners (DeepJDOT's pseudo-labelling), with ``stopgrad_prediction = true`` only the
features move. docs/math.md §8 states it; tests/test_joint_term.py checks it against an independent computation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from otplug.errors import BatchError
from otplug.features.extract import pad_mask, read_value, slice_last
from otplug.terms.action_slice import masked_sq_dist
from otplug.terms.base import TermContext, TermCost
from otplug.terms.configs import JointConfig


class JointTerm:
    uses_encoder = True

    def __init__(self, config: JointConfig) -> None:
        self.config = config

    def required_keys(self, side: str) -> set[str]:
        c = self.config
        if side == "src":
            return {c.src_key, c.action_key} if c.weight_embed > 0 else {c.action_key}
        return {c.target_key} if c.weight_embed > 0 else set()

    def optional_keys(self, side: str) -> set[str]:
        return {self.config.src_pad_key} if side == "src" else set()

    def raw_keys(self, side: str) -> set[str]:
        return {self.config.action_key} if side == "src" else set()

    def embedding_keys(self) -> set[str]:
        c = self.config
        return {c.src_key, c.target_key} if c.weight_embed > 0 else set()

    def predicts_actions(self) -> bool:
        """The loss must give the target side the policy's inputs and an encoder that predicts action chunks."""
        return self.config.weight_label > 0

    def _source_actions(self, src: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        a = slice_last(read_value(src, c.action_key, "src"), c.dim_slice, c.action_key, "src").detach()
        if a.ndim != 3:
            raise BatchError(f"joint: src batch[{c.action_key!r}] must be an action chunk (B, T, D), got shape "
                             f"{tuple(a.shape)}")
        va = pad_mask(src, c.action_key, a, "src", c.src_pad_key)
        return a, torch.ones(a.shape[:2], dtype=torch.bool, device=a.device) if va is None else va

    def _prediction(self, tgt: Mapping[str, torch.Tensor], ctx: TermContext, a: torch.Tensor) -> torch.Tensor:
        c = self.config
        p = ctx.predict_actions(tgt, "tgt")
        if p.ndim == 2:  # a policy that predicts one action per frame
            p = p[:, None]
        p = slice_last(p, c.dim_slice, "predicted actions", "tgt")
        if p.ndim != 3 or p.shape[2] != a.shape[2]:
            raise BatchError(f"joint: the policy's predicted actions have shape {tuple(p.shape)} (after dim_slice), "
                             f"but src {c.action_key!r} chunks have {tuple(a.shape)}: the action dimensions must match")
        T = min(a.shape[1], p.shape[1])
        return p[:, :T].detach() if c.stopgrad_prediction else p[:, :T]

    def cost(self, src, tgt, ctx: TermContext) -> TermCost:
        c = self.config
        parts: dict[str, torch.Tensor] = {}
        total = None
        if c.weight_embed > 0:
            x = ctx.embed(src, c.src_key, "src", embed_name=c.embed_name)
            y = ctx.embed(tgt, c.target_key, "tgt", embed_name=c.embed_name)
            parts["embed"] = ctx.sq_dist(x, y, what=f"joint embedding {c.src_key!r}/{c.target_key!r}")
            total = c.weight_embed * parts["embed"]
        stats: dict[str, float] = {}
        if c.weight_label > 0:
            a, va = self._source_actions(src)
            p = self._prediction(tgt, ctx, a)
            T = p.shape[1]  # the shorter of the two chunks: steps beyond it are compared by neither
            a, va = a[:, :T].to(p.dtype), va[:, :T]
            vp = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)
            parts["label"] = masked_sq_dist(a, p, va, vp)
            stats["pred_norm"] = float(p.detach().pow(2).sum(-1).mean())
            weighted = c.weight_label * parts["label"]
            total = weighted if total is None else total + weighted.to(total.dtype)
        return TermCost(total, parts, stats)
