"""The reach task as a gymnasium environment (one episode at a time), registered as ``otplug/Reach-v0``.

Registered when :mod:`otplug.bench` is imported (as gym-pusht registers on import), so
``import otplug.bench; gym.make("otplug/Reach-v0", domain="real", region="B")`` works; the keyword arguments are
:class:`ReachEnv`'s, strictly (a misspelt one is a ``TypeError``). It wraps
:class:`otplug.bench.env.BatchReachEnv` with ``num_envs=1``; ``reset(seed=s)`` plays the episode of
``episode_seed = s`` (the same scene as :func:`otplug.bench.eval.evaluate` with ``seed + e = s``). Without a
seed, episode seeds are drawn from the env's ``np_random``. Observations follow lerobot's raw layout
(``{"pixels": {"front": ...}, "agent_pos": ...}``) so ``lerobot-eval`` can use it unchanged.
"""

from __future__ import annotations


import gymnasium as gym
import numpy as np
from gymnasium import spaces

from otplug.bench.env import CAMERA, TASK, BatchReachEnv, DomainParams

__all__ = ["GYM_ID", "ReachEnv", "register_gym"]

GYM_ID = "otplug/Reach-v0"


class ReachEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, domain: str | DomainParams = "real", region: str = "all", image_size: int = 32,
                 max_steps: int = 40, success_radius: float = 0.1, noise_seed: int = 0, success_rule: str = "hold",
                 hold_steps: int = 5, render_mode: str | None = "rgb_array") -> None:
        super().__init__()
        self._core = BatchReachEnv(1, domain, region, image_size=image_size, max_steps=max_steps,
                                   success_radius=success_radius, noise_seed=noise_seed, success_rule=success_rule,
                                   hold_steps=hold_steps)
        self.render_mode = render_mode
        self._max_episode_steps = int(max_steps)
        self.task = TASK
        self.task_description = TASK
        s = int(image_size)
        self.observation_space = spaces.Dict({
            "pixels": spaces.Dict({CAMERA: spaces.Box(0, 255, (s, s, 3), np.uint8)}),
            "agent_pos": spaces.Box(-1.0, 1.0, (2,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._last_frame: np.ndarray | None = None

    @property
    def core(self) -> BatchReachEnv:
        return self._core

    def _unbatch(self, obs: dict) -> dict:
        self._last_frame = obs["pixels"][CAMERA][0]
        return {"pixels": {CAMERA: self._last_frame}, "agent_pos": obs["agent_pos"][0]}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        obs, info = self._core.reset([episode_seed])
        return self._unbatch(obs), {"is_success": bool(info["is_success"][0]), "episode_seed": episode_seed}

    def step(self, action):
        obs, reward, terminated, truncated, info = self._core.step(np.asarray(action, np.float64)[None])
        return (self._unbatch(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]),
                {"is_success": bool(info["is_success"][0])})

    def render(self) -> np.ndarray:
        return self._last_frame if self._last_frame is not None else self._core.render()[0]


def register_gym() -> str:
    """Register ``otplug/Reach-v0`` with gymnasium (idempotent); returns the id."""
    if GYM_ID not in gym.registry:
        gym.register(id=GYM_ID, entry_point="otplug.bench.gym_env:ReachEnv", disable_env_checker=True)
    return GYM_ID
