"""LeRobot env plugin for otplug's reach benchmark: ``--env.type=otplug_reach``.

Imported by lerobot's ``register_third_party_plugins()`` (the distribution name starts with ``lerobot_env_``);
registers the gym id ``otplug/Reach-v0`` and the :class:`OtplugReachEnv` config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from otplug.bench.env import CAMERA, TASK
from otplug.bench.gym_env import GYM_ID, register_gym

__all__ = ["GYM_ID", "OtplugReachEnv"]

register_gym()


@EnvConfig.register_subclass("otplug_reach")
@dataclass
class OtplugReachEnv(EnvConfig):
    """otplug's two-domain reach task (see ``otplug.bench.env``)."""

    task: str | None = TASK
    fps: int = 10
    domain: str = "real"  # real | sim
    region: str = "all"  # A | B | all
    image_size: int = 32
    episode_length: int = 40
    success_radius: float = 0.1
    # "hold": within success_radius at each of the last hold_steps steps (the episode lasts episode_length steps);
    # "reach": success as soon as the agent is within the radius (the older, goal-blind-solvable rule)
    success_rule: str = "hold"
    hold_steps: int = 5
    noise_seed: int = 0
    features: dict[str, PolicyFeature] = field(
        default_factory=lambda: {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(2,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(2,)),
        }
    )
    features_map: dict[str, str] = field(
        default_factory=lambda: {
            ACTION: ACTION,
            "agent_pos": OBS_STATE,
            f"pixels/{CAMERA}": f"{OBS_IMAGES}.{CAMERA}",
        }
    )

    def __post_init__(self) -> None:
        if self.domain not in ("real", "sim"):
            raise ValueError(f"--env.domain must be real or sim, got {self.domain!r}")
        if self.region not in ("A", "B", "all"):
            raise ValueError(f"--env.region must be A, B or all, got {self.region!r}")
        self.features[f"pixels/{CAMERA}"] = PolicyFeature(
            type=FeatureType.VISUAL, shape=(self.image_size, self.image_size, 3)
        )

    def create_envs(self, n_envs: int, use_async_envs: bool = False):
        # the env is a few NumPy operations per step: worker processes (lerobot's default AsyncVectorEnv,
        # one process importing torch + lerobot per env) cost far more than they save, so always step in-process
        return super().create_envs(n_envs=n_envs, use_async_envs=False)

    @property
    def package_name(self) -> str:
        return "lerobot_env_otplug"

    @property
    def gym_id(self) -> str:
        return GYM_ID

    @property
    def gym_kwargs(self) -> dict:
        return {
            "domain": self.domain,
            "region": self.region,
            "image_size": self.image_size,
            "max_steps": self.episode_length,
            "success_radius": self.success_radius,
            "success_rule": self.success_rule,
            "hold_steps": self.hold_steps,
            "noise_seed": self.noise_seed,
            "max_episode_steps": self.episode_length,
        }
