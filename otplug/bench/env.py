""""Reach the goal": a two-domain, two-region point-agent task rendered in NumPy.

The world is the square ``[-1, 1]^2`` (x to the right, y up). A point agent starts near the centre and must
come within ``success_radius`` of a goal within ``max_steps`` steps. What a LeRobot policy sees:

* ``observation.state`` — float32 ``(2,)``: the agent's x, y (proprioception only, never the goal);
* ``observation.images.front`` — uint8 ``(H, W, 3)``: the scene, in which the goal is drawn. The goal is
  random per episode and appears **only** in the image, so a policy has to read the image to succeed.

Actions are 2-D velocity commands, clipped to ``[-1, 1]``; the dynamics are

    applied_t = clip(a_{t - latency}) + N(0, action_noise)
    vel_{t+1} = damping * vel_t + gain * applied_t
    pos_{t+1} = clip(pos_t + vel_{t+1}, -1, 1)

**Success: reach and hold** (``success_rule="hold"``, the default). Every episode lasts ``max_steps`` steps; it
succeeds when the agent is within ``success_radius`` of the goal at each of the last ``hold_steps`` steps (it got
there *and stopped there*). So the outcome depends on where the agent ends up, and a policy that never reads the
goal (the image) has final positions independent of the goal: its success rate is at most the largest share of
the region's goal area that one disc of radius ``success_radius`` covers — ``pi r^2 / area`` = 3.4% for
``r = 0.1`` on a region of ``0.55 x 1.7`` — whatever it does: hold still, sweep, serpentine, or head for the
centre of the right region (tests/test_bench_env.py plays each). Under the older rule (``success_rule="reach"``:
success as soon as the agent passes within the radius) a goal-blind sweep succeeded in ~half the episodes.

**Domains.** :class:`DomainParams` holds the visual knobs (palette, background texture, brightness, lighting
gradient, pixel noise, camera shift in pixels) and the dynamics knobs (gain, damping, action noise, latency).
The presets :data:`SIM` and :data:`REAL` differ clearly in every visual knob and moderately in dynamics.

**Regions.** The initial state of an episode is a :class:`Scene` (agent start, goal). The goal's x lies in
``[-0.85, -0.3]`` for region ``"A"`` (left half) and in ``[0.3, 0.85]`` for region ``"B"`` (right half), its y in
``[-0.85, 0.85]``;
``"all"`` draws the side at random. The regions partition the start states: every ``"all"`` scene is the
``"A"`` or the ``"B"`` scene of the same seed. A policy trained on region A only has never seen a goal on the
right and fails on region B.

**Seeds.** An episode is fixed by one integer ``episode_seed``: the scene comes from
``default_rng([episode_seed, 0])`` (independent of the domain, so the sim and real episodes of one seed start
from the same scene) and the domain's randomness (pixel and action noise) from
``default_rng([episode_seed, 1, noise_seed])``. ``lerobot-eval`` seeds episode ``e`` with ``seed + e``;
:func:`otplug.bench.eval.evaluate` does the same, so both see the same episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from otplug.recipes import CAMERA_KEY

__all__ = [
    "CAMERA",
    "CAMERA_KEY",
    "DOMAINS",
    "REAL",
    "REGIONS",
    "SIM",
    "SUCCESS_RULES",
    "TASK",
    "BatchReachEnv",
    "DomainParams",
    "Scene",
    "get_domain",
    "in_region_a",
    "region_of",
    "sample_scene",
]

TASK = "move the agent to the goal"
CAMERA = CAMERA_KEY.rsplit(".", 1)[1]
REGIONS = ("A", "B", "all")
SUCCESS_RULES = ("hold", "reach")
TEXTURES = ("none", "stripes", "checker")

# scene geometry
GOAL_X_RANGE = (0.3, 0.85)  # |goal x|; the sign is the region
GOAL_Y_RANGE = (-0.85, 0.85)
AGENT_START_HALF = 0.2  # agent starts uniformly in [-0.2, 0.2]^2
GOAL_HALF = 0.15  # goal drawn as a square of this half-size (world units)
AGENT_RADIUS = 0.11


def _rgb(value: Any) -> tuple[int, int, int]:
    t = tuple(int(v) for v in value)
    if len(t) != 3 or not all(0 <= v <= 255 for v in t):
        raise ValueError(f"colour must be three integers in [0, 255], got {value!r}")
    return t  # type: ignore[return-value]


def _shift(value: Any) -> tuple[float, float]:
    t = tuple(float(v) for v in value)
    if len(t) != 2:
        raise ValueError(f"camera shift must be (dx, dy) in pixels, got {value!r}")
    return t  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class DomainParams:
    """How one domain looks and moves. Every knob is free; :data:`SIM` and :data:`REAL` are presets."""

    name: str = "custom"
    # --- visual
    background: tuple[int, int, int] = attrs.field(default=(30, 30, 40), converter=_rgb)
    #: second background colour, used by the texture
    background2: tuple[int, int, int] = attrs.field(default=(30, 30, 40), converter=_rgb)
    texture: str = attrs.field(default="none", validator=attrs.validators.in_(TEXTURES))
    #: texture period in pixels (a full stripe/checker cycle)
    texture_period: float = attrs.field(default=8.0, validator=attrs.validators.gt(0))
    agent_rgb: tuple[int, int, int] = attrs.field(default=(230, 60, 60), converter=_rgb)
    goal_rgb: tuple[int, int, int] = attrs.field(default=(60, 200, 80), converter=_rgb)
    #: global intensity factor
    brightness: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    #: lighting gradient: intensity goes from (1 - lighting) at the bottom-left to (1 + lighting) at the top-right
    lighting: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    #: std of the Gaussian pixel noise, in 0-255 units
    noise: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    #: camera shift (dx, dy) in pixels: the whole scene moves right by dx and down by dy
    shift: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_shift)
    # --- dynamics
    gain: float = attrs.field(default=0.06, validator=attrs.validators.gt(0))
    #: share of the previous velocity kept (0: pure velocity control)
    damping: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    #: std of the Gaussian noise added to the applied (clipped) action
    action_noise: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    #: the action applied at step t is the one commanded at step t - latency (zeros before the start)
    latency: int = attrs.field(default=0, validator=[attrs.validators.ge(0), attrs.validators.le(10)])

    def replace(self, **changes: Any) -> DomainParams:
        return attrs.evolve(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


#: Simulation: dark flat background, saturated colours, exact dynamics.
SIM = DomainParams(
    name="sim", background=(30, 30, 40), background2=(30, 30, 40), texture="none", agent_rgb=(230, 60, 60),
    goal_rgb=(60, 200, 80), brightness=1.0, lighting=0.0, noise=0.0, shift=(0.0, 0.0),
    gain=0.06, damping=0.0, action_noise=0.0, latency=0,
)
#: "Real": warm checkered table, duller colours, dimmer with a lighting gradient, sensor noise, the camera
#: shifted by a few pixels; a weaker actuator with some inertia, noise and one step of latency.
REAL = DomainParams(
    name="real", background=(150, 130, 100), background2=(120, 100, 75), texture="checker", texture_period=10.0,
    agent_rgb=(200, 110, 40), goal_rgb=(40, 120, 150), brightness=0.85, lighting=0.25, noise=8.0,
    shift=(2.0, -1.0), gain=0.05, damping=0.25, action_noise=0.01, latency=1,
)
DOMAINS: dict[str, DomainParams] = {"sim": SIM, "real": REAL}


def get_domain(domain: str | DomainParams) -> DomainParams:
    """``"sim"`` / ``"real"`` (case-insensitive) or a :class:`DomainParams` as is."""
    if isinstance(domain, DomainParams):
        return domain
    key = str(domain).lower()
    if key not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)} (or pass DomainParams)")
    return DOMAINS[key]


def _check_region(region: str) -> str:
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    return region


@attrs.frozen
class Scene:
    """The initial state of one episode."""

    agent: tuple[float, float]
    goal: tuple[float, float]

    @property
    def region(self) -> str:
        return region_of(self.goal)


def region_of(goal: Sequence[float]) -> str:
    """``"A"`` when the goal is on the left (x < 0), else ``"B"``."""
    return "A" if in_region_a(np.asarray(goal, dtype=np.float64)[None])[0] else "B"


def in_region_a(points: np.ndarray) -> np.ndarray:
    """bool (N,): which of the points (N, 2) lie in region A (x < 0), the rule of :func:`region_of`."""
    return np.asarray(points)[:, 0] < 0


def sample_scene(episode_seed: int, region: str = "all") -> Scene:
    """The scene of ``episode_seed`` in ``region``; the ``"all"`` scene is the ``"A"`` or ``"B"`` one of that seed."""
    _check_region(region)
    rng = np.random.default_rng([int(episode_seed), 0])
    left = bool(rng.random() < 0.5)
    gx = float(rng.uniform(*GOAL_X_RANGE))
    gy = float(rng.uniform(*GOAL_Y_RANGE))
    agent = rng.uniform(-AGENT_START_HALF, AGENT_START_HALF, 2)
    if region != "all":
        left = region == "A"
    return Scene(agent=(float(agent[0]), float(agent[1])), goal=(-gx if left else gx, gy))


# ---------------------------------------------------------------------------------------------------------------------
# rendering


class _Renderer:
    """Precomputed pixel grids, background and lighting for one domain and image size."""

    def __init__(self, domain: DomainParams, size: int) -> None:
        self.size = size
        dx, dy = domain.shift
        cols = np.arange(size, dtype=np.float32) + 0.5
        # world coordinates of the pixel centres; +dx moves the scene right, +dy moves it down
        self.x = ((cols - dx) / size * 2.0 - 1.0)[None, :]  # (1, W)
        self.y = (1.0 - (cols - dy) / size * 2.0)[:, None]  # (H, 1)
        bg = np.empty((size, size, 3), dtype=np.float32)
        bg[:] = domain.background
        if domain.texture != "none":
            # texture in screen pixels (it is "painted on the table": it moves with the camera shift)
            px = (cols - dx)[None, :]
            py = (cols - dy)[:, None]
            half = domain.texture_period / 2.0
            if domain.texture == "stripes":
                alt = np.floor((px + py) / half) % 2 == 1
            else:
                alt = (np.floor(px / half) + np.floor(py / half)) % 2 == 1
            bg[alt] = domain.background2
        self.background = bg
        xx = np.broadcast_to(self.x, (size, size))
        yy = np.broadcast_to(self.y, (size, size))
        light = domain.brightness * (1.0 + domain.lighting * (xx + yy) / 2.0)
        self.light = light.astype(np.float32)[..., None]  # (H, W, 1)
        self.agent_rgb = np.asarray(domain.agent_rgb, dtype=np.float32)
        self.goal_rgb = np.asarray(domain.goal_rgb, dtype=np.float32)
        self.noise = domain.noise

    def __call__(self, agent: np.ndarray, goal: np.ndarray, rngs: Sequence[np.random.Generator] | None) -> np.ndarray:
        """Render ``N`` scenes: ``agent``, ``goal`` of shape (N, 2) -> uint8 (N, H, W, 3)."""
        n = agent.shape[0]
        img = np.repeat(self.background[None], n, axis=0)
        gx, gy = goal[:, 0, None, None], goal[:, 1, None, None]
        goal_mask = (np.abs(self.x[None] - gx) < GOAL_HALF) & (np.abs(self.y[None] - gy) < GOAL_HALF)
        img[goal_mask] = self.goal_rgb
        ax, ay = agent[:, 0, None, None], agent[:, 1, None, None]
        agent_mask = (self.x[None] - ax) ** 2 + (self.y[None] - ay) ** 2 < AGENT_RADIUS**2
        img[agent_mask] = self.agent_rgb
        img *= self.light[None]
        if self.noise > 0 and rngs is not None:
            for i, rng in enumerate(rngs):
                img[i] += rng.normal(0.0, self.noise, img.shape[1:]).astype(np.float32)
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)


def render_scene(agent: Sequence[float], goal: Sequence[float], domain: str | DomainParams = "sim",
                 image_size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render one frame (uint8 (H, W, 3)); pixel noise only when ``rng`` is given."""
    r = _Renderer(get_domain(domain), image_size)
    return r(np.asarray([agent], np.float32), np.asarray([goal], np.float32), None if rng is None else [rng])[0]


# ---------------------------------------------------------------------------------------------------------------------
# the batched environment


class BatchReachEnv:
    """``N`` independent episodes stepped together in NumPy (no autoreset).

    ``reset(episode_seeds)`` starts one episode per seed; ``step(actions)`` advances the episodes that are still
    running (finished ones stay frozen and ignore their actions). Observations use lerobot's raw env layout::

        {"pixels": {"front": uint8 (N, H, W, 3)}, "agent_pos": float32 (N, 2)}

    which :func:`lerobot.envs.utils.preprocess_observation` turns into ``observation.images.front`` (float
    [0, 1], CHW) and ``observation.state``. ``info`` carries ``is_success`` (N,) and ``steps`` (N,).

    ``success_rule="hold"``: an episode ends after ``max_steps`` steps, terminated (success) when the agent was
    within ``success_radius`` of the goal at each of the last ``hold_steps`` steps, else truncated.
    ``success_rule="reach"``: it terminates with success as soon as the agent is within the radius.
    """

    def __init__(self, num_envs: int, domain: str | DomainParams = "real", region: str = "all", *,
                 image_size: int = 32, max_steps: int = 40, success_radius: float = 0.1, noise_seed: int = 0,
                 success_rule: str = "hold", hold_steps: int = 5) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 8 <= int(image_size) <= 256:
            raise ValueError(f"image_size must be in [8, 256], got {image_size}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if success_rule not in SUCCESS_RULES:
            raise ValueError(f"success_rule must be one of {', '.join(SUCCESS_RULES)}, got {success_rule!r}")
        if int(hold_steps) < 1:
            raise ValueError(f"hold_steps must be >= 1, got {hold_steps}")
        if not float(success_radius) > 0:
            raise ValueError(f"success_radius must be > 0, got {success_radius}")
        self.success_rule = success_rule
        self.hold_steps = min(int(hold_steps), int(max_steps))  # an episode shorter than the hold: hold it all
        self.num_envs = int(num_envs)
        self.domain = get_domain(domain)
        self.region = _check_region(region)
        self.image_size = int(image_size)
        self.max_steps = int(max_steps)
        self.success_radius = float(success_radius)
        self.noise_seed = int(noise_seed)
        self._render = _Renderer(self.domain, self.image_size)
        n = self.num_envs
        self.pos = np.zeros((n, 2), np.float64)
        self.vel = np.zeros((n, 2), np.float64)
        self.goal = np.zeros((n, 2), np.float64)
        self.steps = np.zeros(n, np.int64)
        self.success = np.zeros(n, bool)
        self.inside = np.zeros(n, np.int64)  # consecutive steps within the radius, up to now
        self.done = np.ones(n, bool)
        self.episode_seeds: list[int] = []
        self.scenes: list[Scene] = []
        self._queue = np.zeros((self.domain.latency + 1, n, 2), np.float64)
        self._rngs: list[np.random.Generator] = []

    # -- api
    def reset(self, episode_seeds: Sequence[int]) -> tuple[dict, dict]:
        seeds = [int(s) for s in episode_seeds]
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} episode seeds, got {len(seeds)}")
        self.episode_seeds = seeds
        self.scenes = [sample_scene(s, self.region) for s in seeds]
        self.pos[:] = [sc.agent for sc in self.scenes]
        self.goal[:] = [sc.goal for sc in self.scenes]
        self.vel[:] = 0.0
        self.steps[:] = 0
        self.success[:] = False
        self.inside[:] = 0
        self.done[:] = False
        self._queue[:] = 0.0
        self._rngs = [np.random.default_rng([s, 1, self.noise_seed]) for s in seeds]
        return self._obs(), self._info()

    def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        actions = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 2)
        if not np.all(np.isfinite(actions)):
            actions = np.nan_to_num(actions, nan=0.0, posinf=1.0, neginf=-1.0)
        live = ~self.done
        d = self.domain
        # latency queue: push the new command, apply the oldest
        self._queue[:-1] = self._queue[1:]
        self._queue[-1] = np.clip(actions, -1.0, 1.0)
        applied = self._queue[0].copy()
        if d.action_noise > 0:
            applied += np.stack([rng.normal(0.0, d.action_noise, 2) for rng in self._rngs])
        vel = d.damping * self.vel + d.gain * applied
        pos = np.clip(self.pos + vel, -1.0, 1.0)
        self.vel = np.where(live[:, None], vel, self.vel)
        self.pos = np.where(live[:, None], pos, self.pos)
        self.steps += live
        reached = np.linalg.norm(self.pos - self.goal, axis=1) < self.success_radius
        self.inside = np.where(live, np.where(reached, self.inside + 1, 0), self.inside)
        if self.success_rule == "reach":
            terminated = live & reached
            truncated = live & ~reached & (self.steps >= self.max_steps)
        else:
            last = live & (self.steps >= self.max_steps)
            held = self.inside >= self.hold_steps
            terminated, truncated = last & held, last & ~held
        self.success |= terminated
        self.done |= terminated | truncated
        reward = terminated.astype(np.float32)
        return self._obs(), reward, terminated, truncated, self._info()

    def privileged_state(self) -> np.ndarray:
        """float32 (N, 6): agent x, y, velocity x, y, goal x, y — for scripted experts only."""
        return np.concatenate([self.pos, self.vel, self.goal], axis=1).astype(np.float32)

    def render(self) -> np.ndarray:
        """uint8 (N, H, W, 3) of the current states (draws new pixel noise)."""
        return self._render(self.pos.astype(np.float32), self.goal.astype(np.float32), self._rngs or None)

    # -- helpers
    def _obs(self) -> dict:
        return {"pixels": {CAMERA: self.render()}, "agent_pos": self.pos.astype(np.float32)}

    def _info(self) -> dict:
        return {"is_success": self.success.copy(), "steps": self.steps.copy()}
