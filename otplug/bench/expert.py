"""A scripted expert for the reach task: a proportional controller on the true state.

It moves a share ``k`` of the remaining distance per step, compensating the domain's damping (the velocity it
keeps) and, roughly, its latency (it aims from where the agent will be when the command lands). It knows the
domain's gain, so one expert serves both domains; it never looks at the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from otplug.bench.env import BatchReachEnv, DomainParams, get_domain

__all__ = ["ExpertPolicy", "expert_action", "run_expert"]

DEFAULT_K = 0.6


def expert_action(state: np.ndarray, domain: str | DomainParams, *, k: float = DEFAULT_K) -> np.ndarray:
    """Actions (N, 2) in [-1, 1] from privileged states (N, 6) = agent x, y, velocity x, y, goal x, y."""
    d = get_domain(domain)
    state = np.asarray(state, dtype=np.float64).reshape(-1, 6)
    pos, vel, goal = state[:, 0:2], state[:, 2:4], state[:, 4:6]
    ahead = pos + d.latency * vel  # where the agent is when this command is applied (first order)
    want = k * (goal - ahead)  # displacement wanted for the step
    action = (want - d.damping * vel) / d.gain
    return np.clip(action, -1.0, 1.0).astype(np.float32)


class ExpertPolicy:
    """The expert as a policy-like object for :func:`otplug.bench.eval.rollout`.

    ``needs_env_state = True`` asks the rollout to put the privileged state under ``batch["env_state"]``.
    ``noise`` adds Gaussian noise to the commands (for more varied demonstrations), seeded by ``seed``.
    """

    needs_env_state = True

    def __init__(self, domain: str | DomainParams, *, k: float = DEFAULT_K, noise: float = 0.0, seed: int = 0) -> None:
        self.domain = get_domain(domain)
        self.k = float(k)
        self.noise = float(noise)
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def eval(self) -> ExpertPolicy:
        return self

    def select_action(self, batch: dict[str, Any]) -> np.ndarray:
        state = batch["env_state"]
        if hasattr(state, "detach"):
            state = state.detach().cpu().numpy()
        action = expert_action(state, self.domain, k=self.k)
        if self.noise > 0:
            action = np.clip(action + self._rng.normal(0.0, self.noise, action.shape), -1.0, 1.0).astype(np.float32)
        return action


def run_expert(domain: str | DomainParams, region: str, episode_seeds: Sequence[int], *, image_size: int = 32,
               max_steps: int = 40, noise_seed: int = 0, k: float = DEFAULT_K) -> np.ndarray:
    """Play the expert on the given episodes (all at once) and return their successes (bool array)."""
    env = BatchReachEnv(len(episode_seeds), domain, region, image_size=image_size, max_steps=max_steps,
                        noise_seed=noise_seed)
    env.reset(episode_seeds)
    while not env.done.all():
        env.step(expert_action(env.privileged_state(), env.domain, k=k))
    return env.success.copy()
