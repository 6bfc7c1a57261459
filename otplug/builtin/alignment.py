"""Built-in cross-dataloader alignment policies."""

from otplug.plugins import AlignmentPolicy, hookimpl


@hookimpl
def otplug_alignment_policies() -> list[AlignmentPolicy]:
    return [
        AlignmentPolicy(
            name="rank",
            factory="otplug.lerobot.align:RankAlignment",
            summary="rank-align whitelisted vector keys, fill missing action_is_pad, move to the policy device",
        ),
        AlignmentPolicy(
            name="strict",
            factory="otplug.lerobot.align:StrictAlignment",
            summary="no changes except device moves; any rank/shape mismatch is an error",
        ),
    ]
