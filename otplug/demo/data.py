"""The synthetic sim/real LeRobot dataset pair of the embedded demo.

The demo task is a 2-D reach: a point agent in ``[-1, 1]^2`` moves towards a goal; a scripted proportional
expert provides the actions. Each frame stores

* ``observation.state`` — float32 ``(4,)``: agent x, y, goal x, y;
* ``observation.images.front`` — uint8 ``(H, W, 3)`` PNG: the rendered scene (agent disc, goal square);
* ``action`` — float32 ``(2,)``: the commanded velocity.

The *real* side differs from the *sim* side by a visual shift (background colour, brightness, pixel noise),
a state shift (scale and offset, plus sensor noise), slower and noisier dynamics and random episode lengths
(80–100 % of ``episode_len``). Both sides have the same number of episodes and the same task string, and
episode ``i`` of both sides starts from the same scene (agent start and goal), as when real demonstrations
replay the sim task configurations: the DTW pairing then has a true partner to find.

:func:`ensure_demo_datasets` generates the pair once and caches it (see its docstring). Small datasets of any shape
for tests: :func:`otplug.lerobot.synthetic.make_dataset`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np

from otplug.lerobot.datasets import DatasetError, no_progress_bars, open_dataset, quiet_lerobot
from otplug.lerobot.dtw import compute_pair_info
from otplug.lerobot.pair_info import save_pair_info
from otplug.lerobot.synthetic import _features
from otplug.recipes import CAMERA_KEY

__all__ = [
    "DEMO_TASK",
    "GENERATOR_VERSION",
    "DemoData",
    "DemoDataError",
    "default_cache_dir",
    "ensure_demo_datasets",
    "generate_demo_datasets",
]

#: Bump whenever the generator's output changes; a cache with another stamp is regenerated.
GENERATOR_VERSION = 3
DEMO_TASK = "move the agent to the goal"
SIM_REPO_ID = "otplug/demo_sim"
REAL_REPO_ID = "otplug/demo_real"
STATE_NAMES = ["agent_x", "agent_y", "goal_x", "goal_y"]
ACTION_NAMES = ["vel_x", "vel_y"]
CAMERA = CAMERA_KEY
_STAMP = "otplug-demo.json"


class DemoDataError(DatasetError):
    """The demo/test datasets could not be generated or opened."""


@attrs.frozen
class DemoData:
    """Where the cached demo pair lives. Open the datasets with ``LeRobotDataset(repo_id, root=root)``."""

    sim_repo_id: str
    sim_root: Path
    real_repo_id: str
    real_root: Path
    pair_info_path: Path | None = None


def default_cache_dir() -> Path:
    """``$OTPLUG_CACHE/demo`` when set, else ``~/.cache/otplug/demo``."""
    base = os.environ.get("OTPLUG_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "otplug") / "demo"


# ---------------------------------------------------------------------------------------------------------------------
# the demo task


def _render(agent: np.ndarray, goal: np.ndarray, size: int, *, background, agent_rgb, goal_rgb,
            brightness: float = 1.0, noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render the scene as uint8 (size, size, 3): a goal square and an agent disc on a flat background."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.asarray(background, dtype=np.float32)
    goal_mask = (np.abs(xx - goal[0]) < 0.12) & (np.abs(yy - goal[1]) < 0.12)
    img[goal_mask] = goal_rgb
    agent_mask = (xx - agent[0]) ** 2 + (yy - agent[1]) ** 2 < 0.1**2
    img[agent_mask] = agent_rgb
    img *= brightness
    if noise and rng is not None:
        img += rng.normal(0.0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


_SIM_STYLE = dict(background=(30, 30, 40), agent_rgb=(230, 60, 60), goal_rgb=(60, 200, 80), brightness=1.0, noise=0.0)
_REAL_STYLE = dict(background=(110, 95, 70), agent_rgb=(200, 80, 70), goal_rgb=(70, 170, 90), brightness=0.85,
                   noise=6.0)
# real state = sim state * scale + offset + noise
_REAL_STATE_SCALE = np.array([1.1, 0.9, 1.1, 0.9], dtype=np.float32)
_REAL_STATE_OFFSET = np.array([0.15, -0.1, 0.15, -0.1], dtype=np.float32)


def _write_demo_side(root: Path, repo_id: str, *, real: bool, n_episodes: int, episode_len: int, image_size: int,
                     fps: int, seed: int) -> None:
    quiet_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(seed + (1 if real else 0) * 7919)
    scene_rng = np.random.default_rng([seed, 17])  # the same scenes (start, goal) on both sides
    feats = _features(4, 2, [CAMERA], (image_size, image_size), STATE_NAMES, ACTION_NAMES)
    ds = LeRobotDataset.create(repo_id, fps, features=feats, root=root, use_videos=False, robot_type="point2d")
    try:
        with no_progress_bars():
            _record_demo_episodes(ds, rng, scene_rng, real=real, n_episodes=n_episodes, episode_len=episode_len,
                                  image_size=image_size)
    finally:
        ds.finalize()


def _record_demo_episodes(ds, rng, scene_rng, *, real: bool, n_episodes: int, episode_len: int,
                          image_size: int) -> None:
    style = _REAL_STYLE if real else _SIM_STYLE
    gain, max_speed, dyn_noise = (0.25, 0.18, 0.01) if real else (0.3, 0.2, 0.0)
    for _ in range(n_episodes):
        length = int(rng.integers(max(2, int(0.8 * episode_len)), episode_len + 1)) if real else episode_len
        agent = scene_rng.uniform(-0.8, 0.8, 2).astype(np.float32)
        goal = scene_rng.uniform(-0.8, 0.8, 2).astype(np.float32)
        for _t in range(length):
            action = gain * (goal - agent)
            speed = float(np.linalg.norm(action))
            if speed > max_speed:
                action *= max_speed / speed
            state = np.concatenate([agent, goal]).astype(np.float32)
            if real:
                state = state * _REAL_STATE_SCALE + _REAL_STATE_OFFSET + rng.normal(0, 0.01, 4)
            image = _render(agent, goal, image_size, rng=rng, **style)
            ds.add_frame({
                "observation.state": state.astype(np.float32),
                CAMERA: image,
                "action": action.astype(np.float32),
                "task": DEMO_TASK,
            })
            agent = np.clip(agent + action + (rng.normal(0, dyn_noise, 2) if dyn_noise else 0.0), -1, 1)
            agent = agent.astype(np.float32)
        ds.save_episode()


def generate_demo_datasets(out_dir: str | Path, *, n_episodes: int = 20, episode_len: int = 50, image_size: int = 64,
                           fps: int = 10, seed: int = 0, pair_info: bool = True) -> DemoData:
    """Write the demo pair into ``out_dir/sim`` and ``out_dir/real`` (no caching; ``out_dir`` must be empty).

    With ``pair_info=True`` also writes ``out_dir/pair_info.json`` (DTW on ``observation.state`` with per-dataset
    normalisation — ``normalize="global"`` removes the real side's state offset/scale while keeping the goal
    positions that tell episodes apart; see :func:`otplug.lerobot.dtw.compute_pair_info`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(n_episodes=n_episodes, episode_len=episode_len, image_size=image_size, fps=fps, seed=seed)
    _write_demo_side(out / "sim", SIM_REPO_ID, real=False, **kw)
    _write_demo_side(out / "real", REAL_REPO_ID, real=True, **kw)
    pair_path = None
    if pair_info:
        sim = open_dataset(SIM_REPO_ID, out / "sim")
        real = open_dataset(REAL_REPO_ID, out / "real")
        pair_path = out / "pair_info.json"
        save_pair_info(compute_pair_info(sim, real, key="observation.state", normalize="global"), pair_path)
    return DemoData(SIM_REPO_ID, out / "sim", REAL_REPO_ID, out / "real", pair_path)


def _is_complete(d: Path, stamp: dict) -> bool:
    try:
        return json.loads((d / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def ensure_demo_datasets(cache_dir: str | Path | None = None, *, n_episodes: int = 20, episode_len: int = 50,
                         image_size: int = 64, force: bool = False, fps: int = 10, seed: int = 0) -> DemoData:
    """Return the cached demo pair, generating it first when needed.

    The cache lives in ``cache_dir`` (default :func:`default_cache_dir`) under a folder named after the generator
    version and the parameters. A folder counts as complete only when its stamp file (written last) matches the
    generator version and parameters; generation happens in a temporary sibling folder that is renamed into place,
    so an interrupted run never leaves a half-written cache behind (and a stale or half-written folder is replaced).
    ``force=True`` regenerates. Works offline; 20 episodes x 50 frames at 64 px take a few seconds.
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stamp = {"generator_version": GENERATOR_VERSION, "n_episodes": n_episodes, "episode_len": episode_len,
             "image_size": image_size, "fps": fps, "seed": seed}
    final = base / f"v{GENERATOR_VERSION}-e{n_episodes}-l{episode_len}-px{image_size}-fps{fps}-s{seed}"
    result = DemoData(SIM_REPO_ID, final / "sim", REAL_REPO_ID, final / "real", final / "pair_info.json")
    if not force and _is_complete(final, stamp):
        return result
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=base))
    try:
        generate_demo_datasets(tmp, n_episodes=n_episodes, episode_len=episode_len, image_size=image_size, fps=fps,
                               seed=seed)
        (tmp / _STAMP).write_text(json.dumps(stamp))  # written last: marks the folder complete
        if final.exists():
            trash = base / f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            try:
                final.rename(trash)
            except OSError:
                trash = None
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            # another process finished first; use its copy when complete
            if not _is_complete(final, stamp):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
