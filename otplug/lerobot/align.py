"""Cross-dataloader alignment policies (registered as ``rank`` and ``strict``, see ``otplug.builtin.alignment``).

With a separate OT dataloader, the OT batch comes from other datasets than the BC batch and may differ in small,
harmless ways (a vector stored without the time axis the policy's BC batch has, no ``action_is_pad``, tensors
still on the CPU). An alignment policy makes the OT batch look like the BC batch — or refuses, naming the key.

A policy is called as ``policy(ot_batch, reference, device) -> new dict``. ``reference`` is a BC batch (only its
shapes are read); the batch axis (axis 0) may differ in size and is never compared. The input dict is not
modified. Keys the reference lacks pass through unchanged (apart from the device move); non-tensor values
(e.g. ``task`` strings) pass through untouched.

**Rank alignment** (:class:`RankAlignment`), for whitelisted vector keys only (``action``,
``observation.state``, ``observation.environment_state`` and their ``*_is_pad`` masks): when the ranks differ by
exactly one, the extra axis is axis 1 (the time axis, right after the batch axis) and it has size 1, it is added
(``unsqueeze(1)``: ``(B, D)`` → ``(B, 1, D)``, ``(B,)`` → ``(B, 1)`` for a mask) or removed (``squeeze(1)``).
Everything else is an error: a time axis of size > 1 is never repeated or dropped, other keys — images above all
— are never reshaped or repeated (an image mismatch is an error naming the key and both shapes).

**Padding mask.** When the OT batch has ``action`` but no ``action_is_pad``, a mask of False (nothing padded) is
added: shape ``(B, *reference["action_is_pad"].shape[1:])`` when the reference has one, else ``(B, S)`` for a
``(B, S, D)`` action; it is not added for a 2-D action without a reference mask.

**Device.** Every tensor is moved to ``device``.

**Logging.** The first time a policy instance changes a batch, it writes at most 8 DEBUG lines to the
``otplug.align`` logger (what it did per key); later calls are silent.

:class:`StrictAlignment` only moves tensors to the device; any shape difference (outside the batch axis) on a
shared key, or a missing ``action_is_pad`` the reference has, is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from otplug.errors import BatchError
from otplug.features.extract import is_image_key
from otplug.lerobot.datasets import base_key

__all__ = ["VECTOR_KEYS", "AlignmentError", "RankAlignment", "StrictAlignment"]

log = logging.getLogger("otplug.align")

#: Keys whose rank may be aligned (plus their ``*_is_pad`` masks).
VECTOR_KEYS = ("action", "observation.state", "observation.environment_state")
MAX_LOG_LINES = 8


class AlignmentError(BatchError):
    """The OT batch cannot be aligned to the BC batch."""


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _move(value: Any, device: torch.device | str | None) -> Any:
    if device is not None and isinstance(value, torch.Tensor) and value.device != torch.device(device):
        return value.to(device, non_blocking=True)
    return value


class _Base:
    name = "base"

    def __init__(self, max_log_lines: int = MAX_LOG_LINES) -> None:
        self.max_log_lines = int(max_log_lines)
        self._logged = False

    def _log_first(self, notes: list[str]) -> None:
        if self._logged or not notes:
            return
        self._logged = True
        limit = self.max_log_lines
        if len(notes) > limit:
            notes = notes[: limit - 1] + [f"... and {len(notes) - (limit - 1)} more change(s)"]
        for line in notes:
            log.debug("%s alignment: %s", self.name, line)

    @staticmethod
    def _fill_pad(out: dict, reference: Mapping, notes: list[str], device) -> None:
        if "action" not in out or "action_is_pad" in out or not isinstance(out["action"], torch.Tensor):
            return
        act = out["action"]
        ref_pad = reference.get("action_is_pad")
        if isinstance(ref_pad, torch.Tensor):
            shape = (act.shape[0], *ref_pad.shape[1:])
            if act.ndim >= 2 and len(shape) >= 2 and act.shape[1] != shape[1]:
                raise AlignmentError(
                    f"action has {act.shape[1]} steps {_shape(act)} but the reference action_is_pad has "
                    f"{shape[1]} {_shape(ref_pad)}; cannot fill action_is_pad")
        elif act.ndim == 3:
            shape = tuple(act.shape[:2])
        else:
            return
        out["action_is_pad"] = torch.zeros(shape, dtype=torch.bool, device=device if device is not None else act.device)
        notes.append(f"action_is_pad missing: filled with False, shape {shape}")


class RankAlignment(_Base):
    """Rank-align whitelisted vector keys, fill a missing ``action_is_pad``, move tensors to the device."""

    name = "rank"

    def __init__(self, vector_keys: Iterable[str] = VECTOR_KEYS, max_log_lines: int = MAX_LOG_LINES) -> None:
        super().__init__(max_log_lines)
        self.vector_keys = tuple(vector_keys)

    def _whitelisted(self, key: str) -> bool:
        base = base_key(key)
        return base in self.vector_keys and not is_image_key(base)

    def __call__(self, ot_batch: Mapping[str, Any], reference: Mapping[str, Any],
                 device: torch.device | str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        notes: list[str] = []
        for key, value in ot_batch.items():
            ref = reference.get(key)
            if isinstance(value, torch.Tensor) and isinstance(ref, torch.Tensor) and value.shape[1:] != ref.shape[1:]:
                value = self._align(key, value, ref, notes)
            out[key] = _move(value, device)
        self._fill_pad(out, reference, notes, device)
        moved = sorted(k for k, v in ot_batch.items() if isinstance(v, torch.Tensor) and out[k] is not v
                       and out[k].device != v.device)
        if moved:
            notes.append(f"moved {len(moved)} tensor(s) to {device}: {', '.join(moved)}")
        self._log_first(notes)
        return out

    def _align(self, key: str, value: torch.Tensor, ref: torch.Tensor, notes: list[str]) -> torch.Tensor:
        vs, rs = _shape(value), _shape(ref)
        if not self._whitelisted(key):
            what = "an image" if is_image_key(key) else "not a whitelisted vector key"
            raise AlignmentError(
                f"OT batch key {key!r} has shape {vs} but the BC batch has {rs}; {key!r} is {what} and is never "
                f"reshaped or repeated implicitly (rank alignment applies only to {list(self.vector_keys)})")
        if value.ndim + 1 == ref.ndim and ref.ndim >= 2 and rs[1] == 1 and rs[2:] == vs[1:]:
            notes.append(f"{key}: added a time axis of size 1, {vs} -> {(vs[0], 1, *vs[1:])}")
            return value.unsqueeze(1)
        if value.ndim == ref.ndim + 1 and value.ndim >= 2 and vs[1] == 1 and vs[2:] == rs[1:]:
            notes.append(f"{key}: removed the time axis of size 1, {vs} -> {(vs[0], *vs[2:])}")
            return value.squeeze(1)
        raise AlignmentError(
            f"OT batch key {key!r} has shape {vs} but the BC batch has {rs}; rank alignment only adds or removes a "
            f"time axis of size 1 (axis 1) and never repeats or drops steps")


class StrictAlignment(_Base):
    """Move tensors to the device; any shape mismatch with the BC batch is an error."""

    name = "strict"

    def __call__(self, ot_batch: Mapping[str, Any], reference: Mapping[str, Any],
                 device: torch.device | str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in ot_batch.items():
            ref = reference.get(key)
            if isinstance(value, torch.Tensor) and isinstance(ref, torch.Tensor) and value.shape[1:] != ref.shape[1:]:
                raise AlignmentError(
                    f"OT batch key {key!r} has shape {_shape(value)} but the BC batch has {_shape(ref)} "
                    f"(strict alignment: use the 'rank' policy to add/remove a time axis of size 1 on vector keys)")
            out[key] = _move(value, device)
        if "action" in out and "action_is_pad" not in out and isinstance(reference.get("action_is_pad"), torch.Tensor):
            raise AlignmentError("OT batch has 'action' but no 'action_is_pad' while the BC batch has one "
                                 "(strict alignment: use the 'rank' policy to fill it with False)")
        return out
