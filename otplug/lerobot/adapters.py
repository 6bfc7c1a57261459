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

:meth:`PolicyEncoderBase.capture_spec` names, for each key, the module whose output holds those features in the
policy's own forward pass; :mod:`otplug.lerobot.capture` hooks it in the single-pass training layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from otplug.errors import OtplugError
from otplug.policy_encoder import unwrap_policy

__all__ = ["ACTEncoder", "DiffusionEncoder", "PolicyEncoderBase"]

STATE = "observation.state"
ENV_STATE = "observation.environment_state"


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

    # -- action prediction (terms that compare actions the policy would take: ``joint``) -------------------
    def prediction_problem(self) -> str | None:
        """Why this policy cannot give a differentiable action chunk (None when it can)."""
        return f"the {self.policy_type} adapter has no differentiable action prediction"

    def predict_action_for_ot(self, batch: dict[str, Tensor]) -> Tensor:
        raise OtplugError(self.prediction_problem() or "no action prediction")


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


    def prediction_problem(self) -> str | None:
        return None

    def predict_action_for_ot(self, batch: dict[str, Tensor]) -> Tensor:
        """ACT's action chunk (B, chunk_size, action_dim) on the observations of ``batch`` (preprocessed: normalised
        space, as the training batch), in one differentiable forward of ``policy.model``. The batch's own ``action``
        is never read: ACT's VAE would encode it into the latent (a label leak), so the latent is the prior's mean
        (zeros), as at inference."""
        obs = {k: v for k, v in batch.items() if not k.startswith("action")}
        if self.camera_keys:
            missing = [k for k in self.camera_keys if k not in obs]
            if missing:
                raise OtplugError(f"act: predicting actions needs the policy's cameras {missing} in the batch")
            obs["observation.images"] = [obs[k] for k in self.camera_keys]
        model = self.policy.model
        # ACTModel asserts the actions are given when its VAE is on in training mode; its own flag (not its
        # submodules': dropout stays as the step has it) is off for this call, so the latent is the prior's
        was = model.training
        model.training = False
        try:
            actions, _ = model(obs)
        finally:
            model.training = was
        return actions


class DiffusionEncoder(PolicyEncoderBase):
    """Diffusion: cameras through ``diffusion.rgb_encoder``; no state encoder exists."""

    policy_type = "diffusion"

    def supported_keys(self) -> list[str]:
        return list(self.camera_keys)

    def prediction_problem(self) -> str | None:
        return ("diffusion: its actions come from an iterative denoising loop (num_inference_steps samples of the "
                "U-Net from noise), which has no differentiable action chunk to compare; use an ACT policy with this "
                "term, or terms on features only (image / embedding)")

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
