"""Encoder adapters: features carry gradients into the policy, wrappers are unwrapped, no silent fallback."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lerobot")

from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402

from otplug.errors import OtplugError  # noqa: E402
from otplug.lerobot.adapters import ACTEncoder, DiffusionEncoder  # noqa: E402
from otplug.lerobot.capture import CapturedEncoder, FeatureCapture  # noqa: E402
from otplug.policy_encoder import encode, unwrap_policy  # noqa: E402

CAM = "observation.images.front"
CAM2 = "observation.images.wrist"


def _features(cams=(CAM,)):
    inp = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(4,))}
    for c in cams:
        inp[c] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32))
    out = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(3,))}
    return inp, out


@pytest.fixture(scope="module")
def act_policy():
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    inp, out = _features((CAM, CAM2))
    cfg = ACTConfig(input_features=inp, output_features=out, device="cpu", pretrained_backbone_weights=None,
                    dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_vae_encoder_layers=1,
                    chunk_size=5, n_action_steps=5)
    torch.manual_seed(0)
    return ACTPolicy(cfg)


@pytest.fixture(scope="module")
def diffusion_policy():
    pytest.importorskip("diffusers")
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inp, out = _features()
    cfg = DiffusionConfig(input_features=inp, output_features=out, device="cpu", pretrained_backbone_weights=None,
                          crop_shape=None, use_group_norm=True, down_dims=(16, 32), horizon=8, n_action_steps=4,
                          n_obs_steps=2, num_train_timesteps=10)
    torch.manual_seed(0)
    return DiffusionPolicy(cfg)


def _grad_reaches(policy, module, out):
    policy.zero_grad(set_to_none=True)
    out.pow(2).sum().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_act_state_embedding_has_gradient(act_policy):
    enc = ACTEncoder(act_policy)
    x = torch.randn(5, 4)
    y = enc.encode_feature_for_ot("observation.state", x)
    assert y.shape == (5, 32) and y.requires_grad
    _grad_reaches(act_policy, act_policy.model.encoder_robot_state_input_proj, y)


def test_act_image_embedding_has_gradient_and_time_axis(act_policy):
    enc = ACTEncoder(act_policy)
    y = enc.encode_feature_for_ot(CAM, torch.rand(3, 3, 32, 32))
    assert y.ndim == 4 and y.shape[:2] == (3, 32)
    _grad_reaches(act_policy, act_policy.model.encoder_img_feat_input_proj, y)
    yt = enc.encode_feature_for_ot(CAM, torch.rand(3, 2, 3, 32, 32))
    assert yt.shape[:2] == (3, 2) and yt.ndim == 3
    # the backbone's trainable layers get gradients too
    _grad_reaches(act_policy, act_policy.model.backbone.layer4, yt)


def test_act_unknown_key_and_prefix_is_an_error(act_policy):
    enc = ACTEncoder(act_policy)
    with pytest.raises(OtplugError, match="no learned encoder"):
        enc.encode_feature_for_ot("observation.images", torch.rand(2, 3, 32, 32))
    with pytest.raises(OtplugError, match="action"):
        enc.encode_feature_for_ot("action", torch.rand(2, 5, 3))


def test_diffusion_image_embedding_has_gradient(diffusion_policy):
    enc = DiffusionEncoder(diffusion_policy)
    y = enc.encode_feature_for_ot(CAM, torch.rand(3, 2, 3, 32, 32))
    assert y.shape[:2] == (3, 2) and y.ndim == 3 and y.requires_grad
    rgb = diffusion_policy.diffusion.rgb_encoder
    rgb = rgb[0] if isinstance(rgb, torch.nn.ModuleList) else rgb
    _grad_reaches(diffusion_policy, rgb.out, y)


def test_diffusion_state_is_a_clear_error(diffusion_policy):
    enc = DiffusionEncoder(diffusion_policy)
    with pytest.raises(OtplugError, match="no learned encoder.*label term"):
        enc.encode_feature_for_ot("observation.state", torch.randn(3, 2, 4))


class _Wrapper(torch.nn.Module):  # stands in for DDP / accelerate wrapping
    def __init__(self, module):
        super().__init__()
        self.module = module


class _FSDPLike(torch.nn.Module):  # FSDP keeps the wrapped model as the submodule _fsdp_wrapped_module
    def __init__(self, module):
        super().__init__()
        self._fsdp_wrapped_module = module


def test_wrapped_policies_are_unwrapped(act_policy):
    wrapped = _Wrapper(_Wrapper(act_policy))
    assert unwrap_policy(wrapped) is act_policy
    assert unwrap_policy(_FSDPLike(_Wrapper(act_policy))) is act_policy
    compiled = torch.compile(_Wrapper(act_policy))  # not run: wrapping compiles nothing
    assert unwrap_policy(compiled) is act_policy
    accelerate_utils = pytest.importorskip("accelerate.utils")  # accelerator.unwrap_model strips the same wrapper
    assert accelerate_utils.extract_model_from_parallel(compiled, keep_torch_compile=False).module is act_policy
    forward = act_policy.forward
    unwrap_policy(compiled)
    assert act_policy.forward == forward  # never changes the model
    enc = ACTEncoder(wrapped)
    assert enc.policy is act_policy
    y = enc.encode_feature_for_ot("observation.state", torch.randn(2, 4))
    assert y.requires_grad


def test_wrong_policy_type_is_rejected(act_policy):
    with pytest.raises(OtplugError, match="diffusion"):
        DiffusionEncoder(act_policy)


def test_registry_resolves_builtin_encoders():
    from otplug.plugins import get_registry

    reg = get_registry()
    assert reg.get("encoder", "act").record.load_factory() is ACTEncoder
    assert reg.get("encoder", "diffusion").record.load_factory() is DiffusionEncoder


def _act_batch(n):
    return {
        "observation.state": torch.randn(n, 4),
        CAM: torch.rand(n, 3, 32, 32),
        CAM2: torch.rand(n, 3, 32, 32),
        "action": torch.randn(n, 5, 3),
        "action_is_pad": torch.zeros(n, 5, dtype=torch.bool),
    }


def test_capture_matches_direct_encoding_act(act_policy):
    act_policy.eval()  # no dropout so the two passes agree
    enc = ACTEncoder(act_policy)
    batch = _act_batch(6)
    cap = FeatureCapture(enc, ["observation.state", CAM2, "action"])
    assert cap.supported == {"observation.state", CAM2}
    assert "action" in cap.unsupported
    with cap:
        loss, _ = act_policy.forward(batch)
    for key in ("observation.state", CAM2):
        direct = enc.encode_feature_for_ot(key, batch[key])
        torch.testing.assert_close(cap.features(key), direct, rtol=1e-5, atol=1e-5)
    src, tgt = {CAM2: batch[CAM2][:2]}, {CAM2: batch[CAM2][2:4]}
    ce = CapturedEncoder(cap, {"src": slice(0, 2), "tgt": slice(2, 4)})
    # served by side and row range: a copy of the values (not the same tensor) gets the same rows
    got = encode(ce, "tgt", CAM2, tgt[CAM2].clone())
    torch.testing.assert_close(got, enc.encode_feature_for_ot(CAM2, batch[CAM2][2:4]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encode(ce, "src", CAM2, src[CAM2]), enc.encode_feature_for_ot(CAM2, batch[CAM2][:2]),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(OtplugError, match="no features for 'observation.environment_state'"):
        encode(ce, "src", "observation.environment_state", src[CAM2])
    act_policy.zero_grad(set_to_none=True)
    (loss + got.pow(2).mean()).backward()
    assert act_policy.model.encoder_img_feat_input_proj.weight.grad is not None
    act_policy.train()


def test_capture_matches_direct_encoding_diffusion(diffusion_policy):
    diffusion_policy.eval()
    enc = DiffusionEncoder(diffusion_policy)
    batch = {
        "observation.state": torch.randn(4, 2, 4),
        CAM: torch.rand(4, 2, 3, 32, 32),
        "action": torch.randn(4, 8, 3),
        "action_is_pad": torch.zeros(4, 8, dtype=torch.bool),
    }
    cap = FeatureCapture(enc, [CAM, "observation.state"])
    assert cap.supported == {CAM} and "observation.state" in cap.unsupported
    with cap:
        diffusion_policy.forward(batch)
    torch.testing.assert_close(cap.features(CAM), enc.encode_feature_for_ot(CAM, batch[CAM]), rtol=1e-5, atol=1e-5)
    diffusion_policy.train()
