"""Built-in policy encoder adapters (``encode_feature_for_ot`` for lerobot policies that lack it)."""

from otplug.plugins import PolicyEncoder, hookimpl


@hookimpl
def otplug_policy_encoders() -> list[PolicyEncoder]:
    return [
        PolicyEncoder(name="act", factory="otplug.lerobot.adapters:ACTEncoder",
                      summary="ACT: state -> encoder_robot_state_input_proj, image -> backbone + input proj"),
        PolicyEncoder(name="diffusion", factory="otplug.lerobot.adapters:DiffusionEncoder",
                      summary="Diffusion: image -> rgb_encoder; no state encoder (use a label term)"),
    ]
