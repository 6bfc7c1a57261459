"""A small two-domain closed-loop benchmark for sim-to-real co-training (SPEC §8).

* :mod:`otplug.bench.env` — "reach the goal": a point agent moves to a goal that is visible only in the camera
  image; two visual/dynamics domains (``SIM``, ``REAL``) and two initial-state regions (``A``: goal on the left,
  ``B``: goal on the right). A batched NumPy core (:class:`BatchReachEnv`) and a gymnasium wrapper
  (:class:`ReachEnv`).
* :mod:`otplug.bench.expert` — a scripted expert that uses the true state.
* :mod:`otplug.bench.record` — expert demonstrations as LeRobot datasets (also the sim/real pair of the embedded
  demo, :mod:`otplug.demo.data`).
* :mod:`otplug.bench.eval` — closed-loop evaluation of LeRobot checkpoints (``otplug eval``).

Importing this package registers the gymnasium id ``otplug/Reach-v0`` when gymnasium is installed (it comes with
lerobot), as gym-pusht does on import: ``import otplug.bench; gym.make("otplug/Reach-v0", region="B")``.
"""

from __future__ import annotations

from otplug.bench.env import (
    CAMERA_KEY,
    DOMAINS,
    REAL,
    REGIONS,
    SIM,
    TASK,
    BatchReachEnv,
    DomainParams,
    Scene,
    get_domain,
    region_of,
    sample_scene,
)
from otplug.bench.expert import ExpertPolicy, expert_action, run_expert

__all__ = [
    "CAMERA_KEY",
    "DOMAINS",
    "REAL",
    "REGIONS",
    "SIM",
    "TASK",
    "BatchReachEnv",
    "DomainParams",
    "ExpertPolicy",
    "ReachEnv",  # lazy, see __getattr__
    "Scene",
    "expert_action",
    "get_domain",
    "region_of",
    "run_expert",
    "sample_scene",
]


try:
    from otplug.bench.gym_env import register_gym as _register_gym
except ImportError:  # gymnasium is not a core dependency of otplug
    pass
else:
    _register_gym()


def __getattr__(name: str):
    # the gymnasium wrapper needs gymnasium (comes with lerobot); import it on first use
    if name in ("ReachEnv", "GYM_ID", "register_gym"):
        from otplug.bench import gym_env

        return getattr(gym_env, name)
    raise AttributeError(f"module 'otplug.bench' has no attribute {name!r}")
