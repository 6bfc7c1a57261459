"""One optimizer step: forward, ``bc_loss + lambda_ot * ot_loss``, backward, clip, finiteness vote, update.

Mirrors ``update_policy`` of lerobot's ``lerobot_train.py`` (same calls in the same order, so with OT off the run
is ``lerobot-train`` bit for bit), with two additions: the OT loss, and a finiteness check of the loss **and** the
gradient norm *before* ``optimizer.step()`` (one host sync per step, one all-reduce with several processes). A
non-finite step never reaches the weights: with ``--ot.on_nonfinite=stop`` (default) training stops with a message
naming the step and the losses, with ``skip`` the gradients are dropped and the metric ``skipped_steps`` counts it.

When the loss is finite but its gradient is not, the stop message names the part responsible
(:func:`attribute_nonfinite_gradient`): the step is recomputed from the same batch and RNG state, and each part of
the loss -- the BC loss, each OT term's ``sum(pi * M_term)``, the terms' penalties -- gets one backward of its own.
This costs nothing on a normal step (only the RNG state is kept), and the run stops anyway.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import attrs
import torch

from otplug.errors import OtplugError
from otplug.lerobot.train.metrics import finite_everywhere
from otplug.policy_encoder import unwrap_policy

__all__ = ["NonFiniteStep", "StepResult", "check_finite_weights", "update_policy"]


class NonFiniteStep(OtplugError):
    """A step produced a non-finite loss or gradient and ``--ot.on_nonfinite=stop``."""


@attrs.define
class StepResult:
    metrics: dict[str, float]
    ot: Any  # the OT result (plan, metrics) or None
    skipped: bool


def _grad_norm(policy: Any, accelerator: Any, clip: float) -> torch.Tensor:
    if clip > 0:
        return accelerator.clip_grad_norm_(policy.parameters(), clip)
    return torch.nn.utils.clip_grad_norm_(policy.parameters(), float("inf"), error_if_nonfinite=False)


def _describe(metrics: dict[str, float], ot_res: Any, lambda_ot: float = 0.0, culprit: str | None = None) -> str:
    parts = [f"{k} {metrics[k]:.4g}" for k in ("bc_loss", "ot_loss", "grad_norm") if k in metrics]
    bc, ot, loss = metrics.get("bc_loss", math.nan), metrics.get("ot_loss", math.nan), metrics.get("loss", math.nan)
    if math.isfinite(bc) and math.isfinite(ot) and not math.isfinite(loss):
        parts.append(f"--ot.lambda_ot = {lambda_ot:g} times ot_loss overflows: lower --ot.lambda_ot")
    elif math.isfinite(loss) and not math.isfinite(metrics.get("grad_norm", 0.0)):
        scale = f"; --ot.lambda_ot = {lambda_ot:g} scales the OT part" if ot_res else ""
        if culprit:
            parts.append(f"the loss is finite but its gradient is not: {culprit}{scale}")
        else:
            parts.append("the loss is finite but its gradient is not (a term or the policy has an undefined "
                         "derivative here" + scale + ")")
    if ot_res is not None:
        bad = [k for k, v in ot_res.metrics.items() if k.startswith("ot_cost/") and not math.isfinite(v)]
        if bad:
            parts.append("non-finite term cost(s): " + ", ".join(b.split("/", 1)[1] for b in bad))
    return ", ".join(parts)


def update_policy(policy: Any, batch: dict, n_pairs: int, *, optimizer: Any, lr_scheduler: Any, accelerator: Any,
                  grad_clip_norm: float, ot_side: Any, lambda_ot: float, on_nonfinite: str, step: int) -> StepResult:
    """Run one training step on ``batch`` (already preprocessed). ``step`` is the step number being made (for
    messages). Returns the step's metrics and OT result; ``skipped`` when a non-finite step was dropped."""
    t0 = time.perf_counter()
    policy.train()
    rng = _rng_state() if on_nonfinite == "stop" else None  # to recompute this step if its gradient is non-finite
    ot_res = None
    with accelerator.autocast():
        with ot_side.capturing() if ot_side is not None else contextlib.nullcontext():
            bc_loss, output_dict = policy.forward(batch)
        loss = bc_loss
        if ot_side is not None:
            ot_res = ot_side.loss(batch, n_pairs, policy, accelerator.device)
            if ot_res is not None:
                loss = bc_loss + lambda_ot * ot_res.loss
    accelerator.backward(loss)
    if ot_side is not None:
        ot_side.after_backward()
    grad_norm = _grad_norm(policy, accelerator, grad_clip_norm)

    metrics: dict[str, float] = {"bc_loss": bc_loss.item(), "loss": loss.item(), "grad_norm": float(grad_norm)}
    if ot_res is not None:
        metrics.update(ot_res.metrics)
        metrics["lambda_ot"] = lambda_ot
    here = math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    if not finite_everywhere(0.0 if here else math.nan, accelerator):
        optimizer.zero_grad()
        if on_nonfinite == "stop":
            culprit = None
            if not here and math.isfinite(metrics["loss"]):
                del loss, bc_loss, output_dict  # the step's graph (already used by its backward)
                culprit = attribute_nonfinite_gradient(policy, batch, n_pairs, ot_side=ot_side,
                                                       accelerator=accelerator, rng=rng)
            where = "another process" if here else f"this process: {_describe(metrics, ot_res, lambda_ot, culprit)}"
            raise NonFiniteStep(f"training stopped at step {step}: non-finite loss or gradient ({where}); nothing from "
                                "this step was applied or saved (--ot.on_nonfinite=skip drops such steps instead)")
        metrics["skipped_steps"] = 1.0
        metrics["update_s"] = time.perf_counter() - t0
        return StepResult(metrics, ot_res, skipped=True)
    optimizer.step()
    optimizer.zero_grad()
    if lr_scheduler is not None:
        lr_scheduler.step()
    unwrapped = unwrap_policy(policy)
    if hasattr(unwrapped, "update") and callable(unwrapped.update):
        unwrapped.update()
    if ot_side is not None:
        ot_side.after_step(policy)
    metrics["skipped_steps"] = 0.0
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    metrics["update_s"] = time.perf_counter() - t0
    if output_dict:
        metrics.update({k: float(v) for k, v in output_dict.items() if isinstance(v, int | float)})
    return StepResult(metrics, ot_res, skipped=False)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None] | None) -> None:
    if state is None:
        return
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _finite_grads(value: torch.Tensor, params: list[torch.Tensor]) -> bool:
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return all(g is None or bool(torch.isfinite(g).all()) for g in grads)


def attribute_nonfinite_gradient(policy: Any, batch: dict, n_pairs: int, *, ot_side: Any, accelerator: Any,
                                 rng: Any = None) -> str:
    """Which part of the loss has a non-finite gradient: the step is recomputed (same batch, same pairs, same RNG
    state; the policy unwrapped, so that no other process is waited for) and each part gets one backward of its
    own -- the BC loss, each OT term's ``sum(pi * M_term)`` (pi constant, as in the loss), the terms' penalties.
    Returns a phrase for the stop message (``OT term 'x' gives a non-finite gradient ...``)."""
    if ot_side is not None and ot_side.loss_fn is not None and ot_side.scope != "rank":
        return ("with --ot.scope=global the parts cannot be recomputed in one process; rerun with one process to "
                "find which term (or the BC loss) has an undefined derivative here")
    model = unwrap_policy(policy)
    params = [p for p in model.parameters() if p.requires_grad]
    _set_rng_state(rng)
    bad: list[str] = []
    parts: list[tuple[str, torch.Tensor]] = []
    try:
        with torch.enable_grad(), accelerator.autocast():
            with ot_side.capturing() if ot_side is not None else contextlib.nullcontext():
                bc_loss, _ = model.forward(batch)
            res = None
            if ot_side is not None:
                res = ot_side.loss(batch, n_pairs, model, accelerator.device, replay=True)
        parts = [("the BC loss (the policy's own forward)", bc_loss)]
        if res is not None:
            plan = res.plan.detach()
            parts += [(f"OT term {name!r}", (plan.to(m.dtype) * m).sum()) for name, m in res.term_costs.items()]
            if res.regularizer is not None:
                parts.append(("the OT terms' penalties (variance/covariance/scale_anchor)", res.regularizer))
        checked = [label for label, value in parts if isinstance(value, torch.Tensor) and value.requires_grad]
        bad = [label for label, value in parts if label in checked and not _finite_grads(value, params)]
    except Exception as exc:  # noqa: BLE001 -- the run stops anyway; say why the parts are not named
        return (f"recomputing the step to find the part failed ({type(exc).__name__}: {str(exc)[:120]}); a term or "
                "the policy has an undefined derivative here")
    finally:
        if ot_side is not None:
            ot_side.after_backward()
        for p in params:
            p.grad = None
    if not bad:
        return ("no single part has a non-finite gradient when recomputed (one backward each for "
                + ", ".join(checked) + "): their sum overflows, or the step is not reproducible")
    others = [label for label in checked if label not in bad]
    constant = [label for label, _ in parts if label not in checked]
    return (" and ".join(bad) + (" gives" if len(bad) == 1 else " give") + " a non-finite gradient (found by one "
            "backward per part" + (f"; finite: {', '.join(others)}" if others else "")
            + (f"; no gradient: {', '.join(constant)}" if constant else "") + ")")


def check_finite_weights(policy: Any, step: int) -> None:
    """Refuse to save weights with a NaN/inf (one host sync): a checkpoint is never poisoned."""
    params = [p.detach() for p in policy.parameters()]
    if not params:
        return
    finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
    if not bool(finite):
        bad = next(name for name, p in policy.named_parameters() if not bool(torch.isfinite(p).all()))
        raise NonFiniteStep(f"not saving the checkpoint of step {step}: parameter {bad!r} holds NaN/inf values "
                            "(lower the learning rate or --ot.lambda_ot); the last checkpoint is kept")
