"""Encoder adapters: ``encode_feature_for_ot(key, x)`` for lerobot policies that lack it.

The OT loss asks an encoder for the policy's own features of a batch entry (after the policy's
preprocessor) and expects them **with gradients** into the policy's parameters. These adapters call the
very modules the policy uses in its forward pass:

=============  ==============================  =====================================================
policy         key                             features
=============  ==============================  =====================================================
``act``        ``observation.state``           ``model.encoder_robot_state_input_proj`` -> (B, 256)
``act``        ``observation.environment_state`` ``model.encoder_env_state_input_proj`` -> (B, 256)
``act``        a camera key                    ``model.encoder_img_feat_input_proj(model.backbone(img)["feature_map"])``
                                               -> (B, 256, h, w)
``diffusion``  a camera key                    ``diffusion.rgb_encoder`` (the camera's own encoder when
                                               ``use_separate_rgb_encoder_per_camera``) -> (B, S, 64)
``diffusion``  ``observation.state``           error: Diffusion has no state encoder (use a label term)
=============  ==============================  =====================================================

A time axis (B, S, ...) is folded into the batch for the encoder and unfolded again: (B, S, F) comes back
(image features flattened per step). Camera keys must match ``policy.config.image_features`` exactly (no
prefix matching). Errors propagate; there is never a silent fallback to raw inputs.

The module also holds :class:`FeatureCapture`, the forward hooks the single-pass training layout uses to
read the same features out of the BC forward pass instead of encoding the OT rows a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from otplug.errors import OtplugError

__all__ = [
    "ACTEncoder",
    "CapturedEncoder",
    "DiffusionEncoder",
    "FeatureCapture",
    "PolicyEncoderBase",
    "unwrap_policy",
]

STATE = "observation.state"
ENV_STATE = "observation.environment_state"


def unwrap_policy(policy: Any) -> Any:
    """Strip DDP / accelerate / torch.compile wrappers (``.module``, ``._orig_mod``)."""
    for _ in range(10):
        inner = None
        if isinstance(policy, nn.Module):
            for name in ("module", "_orig_mod"):
                if name in policy._modules:
                    inner = policy._modules[name]
                    break
        elif hasattr(policy, "module"):
            inner = policy.module
        if inner is None:
            return policy
        policy = inner
    return policy


def _fold(x: Tensor, base_ndim: int) -> tuple[Tensor, tuple[int, ...] | None]:
    """(B, S, *base) -> (B*S, *base); returns the lead shape to unfold, or None without a time axis."""
    if x.ndim == base_ndim + 1:
        return x, None
    if x.ndim == base_ndim + 2:
        b, s = x.shape[:2]
        return x.reshape(b * s, *x.shape[2:]), (b, s)
    raise OtplugError(f"expected a tensor with {base_ndim + 1} or {base_ndim + 2} dims (batch[, time], ...), "
                      f"got shape {tuple(x.shape)}")


def _unfold(y: Tensor, lead: tuple[int, ...] | None) -> Tensor:
    if lead is None:
        return y
    return y.reshape(*lead, -1)


class PolicyEncoderBase:
    """Common part of the adapters: the unwrapped policy, key checks, the capture spec."""

    policy_type = ""

    def __init__(self, policy: Any) -> None:
        self.policy = unwrap_policy(policy)
        cfg = getattr(self.policy, "config", None)
        if cfg is None:
            raise OtplugError(f"{type(self).__name__} needs a lerobot policy with a .config, got {type(policy).__name__}")
        kind = getattr(cfg, "type", None)
        if self.policy_type and kind != self.policy_type:
            raise OtplugError(f"{type(self).__name__} is for {self.policy_type!r} policies, got {kind!r}")
        self.config = cfg
        self.camera_keys = list(cfg.image_features)

    def supported_keys(self) -> list[str]:
        raise NotImplementedError

    def _unknown(self, key: str) -> OtplugError:
        return OtplugError(
            f"{self.policy_type} encoder: no learned encoder for key {key!r}; keys with an encoder: "
            f"{', '.join(self.supported_keys()) or 'none'} (camera keys must match policy.config.image_features "
            "exactly); use a label term for other keys"
        )

    def encode_feature_for_ot(self, key: str, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- single-pass capture -------------------------------------------------------------------------
    def capture_spec(self, key: str) -> tuple[nn.Module, Callable[[list[Tensor]], Tensor]]:
        """(module to hook, function mapping that module's outputs in one forward to (B, ...) features)."""
        raise self._unknown(key)

    def __call__(self, key: str, x: Tensor) -> Tensor:
        return self.encode_feature_for_ot(key, x)


class ACTEncoder(PolicyEncoderBase):
    """ACT: state and environment state through their input projections; cameras through the backbone."""

    policy_type = "act"

    def supported_keys(self) -> list[str]:
        keys = []
        if self.config.robot_state_feature:
            keys.append(STATE)
        if self.config.env_state_feature:
            keys.append(ENV_STATE)
        return keys + self.camera_keys

    def encode_feature_for_ot(self, key: str, x: Tensor) -> Tensor:
        model = self.policy.model
        if key == STATE and self.config.robot_state_feature:
            return model.encoder_robot_state_input_proj(x)
        if key == ENV_STATE and self.config.env_state_feature:
            return model.encoder_env_state_input_proj(x)
        if key in self.camera_keys:
            flat, lead = _fold(x, 3)
            feats = model.encoder_img_feat_input_proj(model.backbone(flat)["feature_map"])
            return _unfold(feats, lead)
        raise self._unknown(key)

    def capture_spec(self, key: str) -> tuple[nn.Module, Callable[[list[Tensor]], Tensor]]:
        model = self.policy.model
        if key == STATE and self.config.robot_state_feature:
            return model.encoder_robot_state_input_proj, lambda outs: outs[0]
        if key == ENV_STATE and self.config.env_state_feature:
            return model.encoder_env_state_input_proj, lambda outs: outs[0]
        if key in self.camera_keys:
            idx = self.camera_keys.index(key)
            # ACTModel.forward calls the projection once per camera, in image_features order
            return model.encoder_img_feat_input_proj, lambda outs: outs[idx]
        raise self._unknown(key)


class DiffusionEncoder(PolicyEncoderBase):
    """Diffusion: cameras through ``diffusion.rgb_encoder``; no state encoder exists."""

    policy_type = "diffusion"

    def supported_keys(self) -> list[str]:
        return list(self.camera_keys)

    def _no_state(self, key: str) -> OtplugError:
        return OtplugError(
            f"diffusion encoder: the Diffusion policy has no learned encoder for {key!r} (the state enters the "
            "U-Net's global conditioning unchanged), so an embedding term on it cannot train anything; use a "
            f"label term for {key!r} (use_learned_embed=false / type 'label') or embed a camera key instead"
        )

    def _camera_encoder(self, key: str) -> nn.Module:
        enc = self.policy.diffusion.rgb_encoder
        if isinstance(enc, nn.ModuleList):
            return enc[self.camera_keys.index(key)]
        return enc

    def encode_feature_for_ot(self, key: str, x: Tensor) -> Tensor:
        if key in (STATE, ENV_STATE):
            raise self._no_state(key)
        if key not in self.camera_keys:
            raise self._unknown(key)
        flat, lead = _fold(x, 3)
        return _unfold(self._camera_encoder(key)(flat), lead)

    def capture_spec(self, key: str) -> tuple[nn.Module, Callable[[list[Tensor]], Tensor]]:
        if key in (STATE, ENV_STATE):
            raise self._no_state(key)
        if key not in self.camera_keys:
            raise self._unknown(key)
        s = self.config.n_obs_steps
        enc = self.policy.diffusion.rgb_encoder
        if isinstance(enc, nn.ModuleList):
            # called on "(b s) c h w" for its camera only
            return enc[self.camera_keys.index(key)], lambda outs: outs[0].reshape(-1, s, outs[0].shape[-1])
        n, idx = len(self.camera_keys), self.camera_keys.index(key)
        # shared encoder called once on "(b s n) c h w"
        return enc, lambda outs: outs[0].reshape(-1, s, n, outs[0].shape[-1])[:, :, idx]


class FeatureCapture:
    """Forward hooks recording the encoder outputs of one BC forward pass, for the single-pass layout.

    ``FeatureCapture(encoder, keys)`` splits ``keys`` into ``supported`` (a hook exists) and
    ``unsupported`` (key -> reason); use it as a context manager around the policy's forward, then
    ``features(key)`` gives (B_total, ...) features of every row of that batch, with gradients.
    """

    def __init__(self, encoder: PolicyEncoderBase | None, keys: Iterable[str]) -> None:
        self.encoder = encoder
        self.specs: dict[str, tuple[nn.Module, Callable[[list[Tensor]], Tensor]]] = {}
        self.unsupported: dict[str, str] = {}
        for key in sorted(set(keys)):
            if encoder is None or not hasattr(encoder, "capture_spec"):
                self.unsupported[key] = "the policy's encoder offers no capture hooks"
                continue
            try:
                self.specs[key] = encoder.capture_spec(key)
            except OtplugError as exc:
                self.unsupported[key] = str(exc)
        self._outputs: dict[int, list[Tensor]] = {}
        self._handles: list[Any] = []

    @property
    def supported(self) -> set[str]:
        return set(self.specs)

    def __enter__(self) -> FeatureCapture:
        self._outputs = {}
        modules = {id(m): m for m, _ in self.specs.values()}
        for mid, module in modules.items():
            def hook(_mod, _inp, out, mid=mid):
                self._outputs.setdefault(mid, []).append(out)
            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def features(self, key: str) -> Tensor:
        module, extract = self.specs[key]
        outs = self._outputs.get(id(module))
        if not outs:
            raise OtplugError(f"single-pass capture: the forward pass did not call the encoder of {key!r}")
        return extract(outs)

    def clear(self) -> None:
        self._outputs = {}


class CapturedEncoder:
    """An ``encode_feature_for_ot`` that serves features captured from the BC forward.

    ``sides`` maps each OT input tensor (the exact objects handed to ``OTLoss`` as ``src[key]`` /
    ``tgt[key]``) to the rows of the BC batch it came from. Keys that were not captured go to ``fallback``
    (a real encoder, which then runs a second forward on those rows) -- only if the caller allowed it.
    """

    def __init__(self, capture: FeatureCapture, sides: Mapping[str, list[tuple[Tensor, slice]]],
                 fallback: Any = None) -> None:
        self.capture = capture
        self.sides = sides
        self.fallback = fallback
        self._cache: dict[str, Tensor] = {}

    def encode_feature_for_ot(self, key: str, x: Tensor) -> Tensor:
        if key not in self.capture.supported:
            if self.fallback is None:
                why = self.capture.unsupported.get(key) or (
                    f"not a key the policy's encoder modules produce (captured: {', '.join(sorted(self.capture.supported)) or 'none'}); "
                    "a term's embed_name must name such a batch key in the single-pass layout")
                raise OtplugError(f"single-pass capture has no features for {key!r}: {why}")
            return self.fallback.encode_feature_for_ot(key, x)
        rows = None
        for tensor, sl in self.sides.get(key, []):
            if tensor is x:
                rows = sl
                break
        if rows is None:  # the loss may hand over a view or a copy: match by value
            for tensor, sl in self.sides.get(key, []):
                if tensor.shape == x.shape and torch.equal(tensor, x):
                    rows = sl
                    break
        if rows is None:
            raise OtplugError(f"single-pass capture: could not tell which rows of the batch {key!r} came from")
        if key not in self._cache:
            self._cache[key] = self.capture.features(key)
        return self._cache[key][rows]
