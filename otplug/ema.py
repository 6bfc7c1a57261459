"""An exponential-moving-average (EMA) copy of a policy: the "target encoder" of ROT / BYOL-style training.

Terms with ``grad = "source"`` (or ``"target"``) and ``stopgrad_encoder = "ema"`` compute the features of the
side that gets no gradient with this copy instead of the policy itself::

    ot = otplug.OTLoss(cfg)
    ema = EMAEncoder(policy) if ot.needs_ema_encoder else None      # once, after the policy is built
    for step in ...:
        res = ot(src, tgt, encoder=policy, ema_encoder=ema)
        (bc_loss + lambda_ot * res.loss).backward()
        optimizer.step()
        if ema is not None:
            ema.update(policy, ot.config.ema_decay)                   # after every optimizer step

``update`` sets, for every parameter, ``ema = decay * ema + (1 - decay) * param`` (``decay = 1``: frozen;
``decay = 0``: a copy of the current policy) and copies the buffers (e.g. BatchNorm statistics). The copy never
requires gradients and stays in eval mode (no dropout in the constant features). Wrappers (DDP, accelerate,
``torch.compile``) are stripped with :func:`otplug.policy_encoder.unwrap_policy`; the copy is the policy itself,
so the policy's encoder adapter (``otplug list-encoders``) works on it unchanged. It costs one more copy of the
policy's parameters on the policy's device.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from otplug.errors import OtplugError
from otplug.policy_encoder import unwrap_policy

__all__ = ["EMAEncoder"]


def _check_decay(decay: Any) -> float:
    number = isinstance(decay, (int, float)) and not isinstance(decay, bool)
    if not number or not math.isfinite(decay) or not 0 <= decay <= 1:
        raise OtplugError(f"EMA decay must be a number in [0, 1], got {decay!r}")
    return float(decay)


class EMAEncoder:
    """A frozen copy of ``module`` whose parameters follow it as an exponential moving average.

    ``module``: the policy (or any ``torch.nn.Module``); ``decay``: the default of :meth:`update`.
    ``self.module`` is the copy (pass the ``EMAEncoder`` itself, or ``self.module``, as ``ema_encoder``).
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.99) -> None:
        source = unwrap_policy(module)
        if not isinstance(source, torch.nn.Module):
            raise OtplugError(f"EMAEncoder needs a torch.nn.Module (the policy), got {type(source).__name__}")
        self.decay = _check_decay(decay)
        self.module: torch.nn.Module = copy.deepcopy(source)
        self.module.requires_grad_(False)
        self.module.eval()
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module, decay: float | None = None) -> None:
        """``ema = decay * ema + (1 - decay) * param`` for every parameter of ``module`` (matched by name);
        buffers are copied. Call it after every optimizer step."""
        d = self.decay if decay is None else _check_decay(decay)
        source = unwrap_policy(module)
        ema_params = dict(self.module.named_parameters())
        src_params = dict(source.named_parameters())
        if ema_params.keys() != src_params.keys():
            only_src = sorted(src_params.keys() - ema_params.keys())[:3]
            only_ema = sorted(ema_params.keys() - src_params.keys())[:3]
            raise OtplugError(f"EMAEncoder.update: the module's parameters differ from the copy's (only in the module: "
                              f"{only_src}, only in the copy: {only_ema}); update with the module the copy was made of")
        for name, e in ema_params.items():
            p = src_params[name].detach()
            if p.shape != e.shape:
                raise OtplugError(f"EMAEncoder.update: parameter {name!r} has shape {tuple(p.shape)} but the copy "
                                  f"{tuple(e.shape)}")
            p = p.to(device=e.device, dtype=e.dtype)
            if d == 0.0:
                e.copy_(p)
            elif d != 1.0:
                e.lerp_(p, 1.0 - d)  # e + (1 - d) (p - e) = d e + (1 - d) p
        ema_buffers = dict(self.module.named_buffers())
        for name, b in source.named_buffers():
            if name in ema_buffers and ema_buffers[name].shape == b.shape:
                ema_buffers[name].copy_(b.detach())
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: the copy's weights and the number of updates."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state.get("updates", 0))
        self.decay = _check_decay(state.get("decay", self.decay))

    def __repr__(self) -> str:
        return f"EMAEncoder({type(self.module).__name__}, decay={self.decay:g}, updates={self.updates})"
