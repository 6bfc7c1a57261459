"""Expert demonstrations of the reach task as LeRobot datasets (``otplug record``).

Each frame stores ``observation.state`` (agent x, y), ``observation.images.front`` (PNG, or MP4 with
``use_videos=True``; decode with ``video_backend="pyav"``), ``action`` (the expert's command) and the task
string. Every episode lasts ``max_steps`` steps (the task is reach *and hold*: the expert reaches the goal and stays).

**Pairing.** Episode ``i`` is played with the episode seed :func:`episode_seed` ``(scene_seed, i)``, and the scene
depends only on that seed and the region (not on the domain). So a sim dataset and a real dataset recorded with
the same ``scene_seed`` start episode ``i`` from the same scene — the true partner the DTW pairing of
``otplug pair`` should find — and an ``"all"`` dataset shares the scene of episode ``i`` with the ``"A"`` (or
``"B"``) dataset whenever its episode ``i`` falls in that region. ``seed`` drives the domain's noise (pixels,
actions) and the optional expert noise; ``scene_seed`` defaults to ``seed``.

A summary (domain parameters, region, seeds, episode seeds, expert successes) is written to
``meta/otplug_bench.json`` inside the dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from otplug.atomic import save_text
from otplug.bench.env import CAMERA, CAMERA_KEY, TASK, BatchReachEnv, DomainParams, get_domain
from otplug.bench.expert import DEFAULT_K, expert_action
from otplug.errors import OtplugError

__all__ = ["PLAY_MOTIONS", "RecordResult", "episode_seed", "episode_seeds", "main", "open_recorded", "play_waypoints",
           "record_demos", "record_play"]

RECORD_VERSION = 1
BENCH_META = "otplug_bench.json"
_RECORD_TAG = 0x0DE30  # separates recording seeds from other uses of SeedSequence


def episode_seed(scene_seed: int, index: int) -> int:
    """The episode seed of episode ``index`` of a recording with ``scene_seed`` (a 31-bit integer)."""
    return int(np.random.SeedSequence([_RECORD_TAG, int(scene_seed), int(index)]).generate_state(1)[0] >> 1)


def episode_seeds(scene_seed: int, n: int) -> list[int]:
    return [episode_seed(scene_seed, i) for i in range(n)]


@attrs.frozen
class RecordResult:
    root: Path
    repo_id: str
    domain: str
    region: str
    episodes: int
    frames: int
    successes: int
    episode_seeds: list[int]

    def open(self, **kwargs: Any):
        return open_recorded(self.root, repo_id=self.repo_id, **kwargs)


def _features(image_size: int, use_videos: bool) -> dict:
    return {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["agent_x", "agent_y"]},
        CAMERA_KEY: {"dtype": "video" if use_videos else "image", "shape": (image_size, image_size, 3),
                     "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["vel_x", "vel_y"]},
    }


def _lerobot_helpers():
    """(quiet_lerobot, open_dataset) from otplug's lerobot layer (imported late: lerobot is an optional extra)."""
    from otplug.lerobot.datasets import open_dataset, quiet_lerobot

    return quiet_lerobot, open_dataset


def _play(domain: str | DomainParams, region: str, seeds: Sequence[int], command: Any, *, rng_tag: int,
          image_size: int, max_steps: int, noise_seed: int, batch: int) -> list[dict[str, Any]]:
    """Episodes of ``seeds`` driven by ``command(env, obs, rngs, t) -> actions`` (``rngs``: one generator per episode,
    ``default_rng([seed, rng_tag, noise_seed])``; ``t``: the step), ``batch`` episodes at a time. One dict per episode
    with ``state`` (T, 2), ``image`` (T, H, W, 3), ``action`` (T, 2), ``success`` and ``episode_seed``."""
    episodes: list[dict[str, Any]] = []
    for start in range(0, len(seeds), batch):
        chunk = list(seeds[start:start + batch])
        env = BatchReachEnv(len(chunk), domain, region, image_size=image_size, max_steps=max_steps,
                            noise_seed=noise_seed)
        obs, _ = env.reset(chunk)
        rngs = [np.random.default_rng([s, rng_tag, noise_seed]) for s in chunk]
        frames: list[list[tuple]] = [[] for _ in chunk]
        t = 0
        while not env.done.all():
            act = command(env, obs, rngs, t)
            for i in np.flatnonzero(~env.done):
                frames[i].append((obs["agent_pos"][i], obs["pixels"][CAMERA][i], act[i]))
            obs, *_ = env.step(act)
            t += 1
        for i, fr in enumerate(frames):
            episodes.append({
                "state": np.stack([f[0] for f in fr]).astype(np.float32),
                "image": np.stack([f[1] for f in fr]),
                "action": np.stack([f[2] for f in fr]).astype(np.float32),
                "success": bool(env.success[i]),
                "episode_seed": chunk[i],
            })
    return episodes


def play_expert(domain: str | DomainParams, region: str, seeds: Sequence[int], *, image_size: int = 32,
                max_steps: int = 40, noise_seed: int = 0, expert_noise: float = 0.0, k: float = DEFAULT_K,
                batch: int = 256) -> list[dict[str, Any]]:
    """Play the expert on ``seeds`` and return one dict per episode with ``state`` (T, 2), ``image`` (T, H, W, 3),
    ``action`` (T, 2) and ``success``. ``expert_noise`` adds Gaussian noise to the commands (seeded per episode)."""
    def command(env: BatchReachEnv, _obs: dict, rngs: list, _t: int) -> np.ndarray:
        act = expert_action(env.privileged_state(), env.domain, k=k)
        if expert_noise > 0:
            act = np.clip(act + np.stack([r.normal(0.0, expert_noise, 2) for r in rngs]), -1, 1).astype(np.float32)
        return act

    return _play(domain, region, seeds, command, rng_tag=2, image_size=image_size, max_steps=max_steps,
                 noise_seed=noise_seed, batch=batch)


#: goal-blind motions of :func:`record_play` (they never read the goal: the frames of a robot logging while it moves)
PLAY_MOTIONS = ("waypoints",)
#: steps between two waypoints of the ``waypoints`` motion
WAYPOINT_STEPS = 10


def play_waypoints(domain: str | DomainParams, region: str, seeds: Sequence[int], *, image_size: int = 32,
                   max_steps: int = 40, noise_seed: int = 0, batch: int = 256) -> list[dict[str, Any]]:
    """A goal-blind scripted sweep: the agent is driven towards a random waypoint of the workspace (uniform in
    ``[-0.9, 0.9]^2``, a new one every :data:`WAYPOINT_STEPS` steps) by a proportional command on its own position.
    It reads only ``observation.state``, never the goal or the image: what a real robot records while it runs a
    scripted motion with a scene set up. One dict per episode with ``state`` and ``image`` (no actions kept)."""
    waypoints: list[np.ndarray] = []

    def command(_env: BatchReachEnv, obs: dict, rngs: list, t: int) -> np.ndarray:
        if t % WAYPOINT_STEPS == 0:
            waypoints[:] = [np.stack([r.uniform(-0.9, 0.9, 2) for r in rngs])]
        return np.clip(2.0 * (waypoints[0] - obs["agent_pos"]), -1.0, 1.0).astype(np.float32)

    episodes = _play(domain, region, seeds, command, rng_tag=3, image_size=image_size, max_steps=max_steps,
                     noise_seed=noise_seed, batch=batch)
    return [{k: v for k, v in ep.items() if k in ("state", "image", "episode_seed")} for ep in episodes]


def record_play(root: str | Path, *, domain: str | DomainParams = "real", region: str = "all", n_episodes: int = 40,
                seed: int = 0, scene_seed: int | None = None, image_size: int = 32, max_steps: int = 40,
                fps: int = 10, use_videos: bool = False, repo_id: str | None = None, task: str = TASK,
                motion: str = "waypoints") -> RecordResult:
    """Write a camera + state log **without actions** (a target pool: ``--ot.target_pool``) of a goal-blind motion
    (:data:`PLAY_MOTIONS`) to a new LeRobot dataset at ``root``. No expert, no success, no action labels: only what a
    robot's camera and joint encoders see while it moves in the scenes."""
    if motion not in PLAY_MOTIONS:
        raise OtplugError(f"unknown motion {motion!r}; choose {', '.join(PLAY_MOTIONS)}")
    dom, root, scene_seed, seeds = _start(domain, region, n_episodes, image_size, root, seed, scene_seed)
    repo_id = repo_id or f"otplug/reach_{dom.name}_{region}_play"
    episodes = play_waypoints(dom, region, seeds, image_size=image_size, max_steps=max_steps, noise_seed=seed)
    features = {k: v for k, v in _features(image_size, use_videos).items() if k != "action"}
    frames = _write(root, repo_id, fps, features, use_videos, episodes, task)
    meta = {"version": RECORD_VERSION, "domain": dom.to_dict(), "region": region, "n_episodes": n_episodes,
            "seed": seed, "scene_seed": scene_seed, "image_size": image_size, "max_steps": max_steps, "fps": fps,
            "use_videos": use_videos, "motion": motion, "task": task, "frames": frames, "actions": False,
            "episode_seeds": seeds}
    save_text(root / "meta" / BENCH_META, json.dumps(meta, indent=1), "the benchmark metadata")
    return RecordResult(root, repo_id, dom.name, region, n_episodes, frames, 0, seeds)


def _start(domain: Any, region: str, n_episodes: int, image_size: int, root: str | Path, seed: int,
           scene_seed: int | None) -> tuple[DomainParams, Path, int, list[int]]:
    """Checked recording options: the domain, the (new, empty) folder, the scene seed and the episode seeds."""
    try:
        dom = get_domain(domain)
    except ValueError as exc:
        raise OtplugError(str(exc)) from None
    if region not in ("A", "B", "all"):
        raise OtplugError(f"unknown region {region!r}; choose A, B or all")
    if n_episodes < 1:
        raise OtplugError(f"n_episodes must be >= 1, got {n_episodes}")
    if not 8 <= image_size <= 256:
        raise OtplugError(f"image_size must be in [8, 256], got {image_size}")
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        raise OtplugError(f"{root} already exists and is not empty; choose a new dataset folder")
    if root.exists():
        root.rmdir()  # LeRobotDataset.create wants to make it
    scene_seed = seed if scene_seed is None else scene_seed
    return dom, root, scene_seed, episode_seeds(scene_seed, n_episodes)


def _write(root: Path, repo_id: str, fps: int, features: dict, use_videos: bool, episodes: list[dict[str, Any]],
           task: str) -> int:
    """Write the episodes (``state``, ``image`` and, where the features have it, ``action``) as a LeRobot dataset;
    returns the number of frames."""
    quiet_lerobot, _ = _lerobot_helpers()
    quiet_lerobot()
    import datasets as hf_datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if use_videos:
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 (lerobot's default encoder) logs every episode otherwise
    was = hf_datasets.is_progress_bar_enabled()
    hf_datasets.disable_progress_bars()
    ds = LeRobotDataset.create(repo_id, fps, features=features, root=root, use_videos=use_videos,
                               robot_type="point2d")
    try:
        for ep in episodes:
            for t in range(len(ep["state"])):
                frame = {"observation.state": ep["state"][t], CAMERA_KEY: ep["image"][t], "task": task}
                if "action" in features:
                    frame["action"] = ep["action"][t]
                ds.add_frame(frame)
            ds.save_episode()
    finally:
        ds.finalize()
        if was:
            hf_datasets.enable_progress_bars()
    return int(sum(len(ep["state"]) for ep in episodes))


def record_demos(root: str | Path, *, domain: str | DomainParams = "real", region: str = "all", n_episodes: int = 20,
                 seed: int = 0, scene_seed: int | None = None, image_size: int = 32, max_steps: int = 40,
                 fps: int = 10, use_videos: bool = False, repo_id: str | None = None, task: str = TASK,
                 expert_noise: float = 0.0) -> RecordResult:
    """Write ``n_episodes`` expert episodes to a new LeRobot dataset at ``root`` (which must not exist yet)."""
    dom, root, scene_seed, seeds = _start(domain, region, n_episodes, image_size, root, seed, scene_seed)
    repo_id = repo_id or f"otplug/reach_{dom.name}_{region}"
    episodes = play_expert(dom, region, seeds, image_size=image_size, max_steps=max_steps, noise_seed=seed,
                           expert_noise=expert_noise)
    frames = _write(root, repo_id, fps, _features(image_size, use_videos), use_videos, episodes, task)
    successes = int(sum(ep["success"] for ep in episodes))
    meta = {
        "version": RECORD_VERSION, "domain": dom.to_dict(), "region": region, "n_episodes": n_episodes,
        "seed": seed, "scene_seed": scene_seed, "image_size": image_size, "max_steps": max_steps, "fps": fps,
        "use_videos": use_videos, "expert_noise": expert_noise, "task": task, "frames": frames,
        "expert_successes": successes, "episode_seeds": seeds,
        "episode_success": [ep["success"] for ep in episodes],
    }
    save_text(root / "meta" / BENCH_META, json.dumps(meta, indent=1), "the benchmark metadata")
    return RecordResult(root, repo_id, dom.name, region, n_episodes, frames, successes, seeds)


def open_recorded(root: str | Path, repo_id: str | None = None, **kwargs: Any):
    """Open a recorded dataset read-only (``video_backend="pyav"`` by default)."""
    _, open_dataset = _lerobot_helpers()
    root = Path(root).expanduser()
    return open_dataset(repo_id or f"local/{root.name}", root, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otplug record",
                                description="Record expert demonstrations of the reach task as a LeRobot dataset.")
    p.add_argument("--out", required=True, help="new dataset folder")
    p.add_argument("--domain", default="real", choices=["real", "sim"])
    p.add_argument("--region", default="all", choices=["A", "B", "all"])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    p.add_argument("--scene-seed", type=int, help="scene seed (default: --seed); equal scene seeds pair episodes")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--video", action="store_true", help="store the camera as MP4 (decode with pyav)")
    p.add_argument("--repo-id", help="dataset repo id (default otplug/reach_<domain>_<region>)")
    p.add_argument("--expert-noise", type=float, default=0.0, help="std of noise on the expert's commands")
    p.add_argument("--motion", choices=PLAY_MOTIONS, help="record a goal-blind motion instead of the expert: a camera "
                   "+ state log without actions (a --ot.target_pool dataset)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.motion is not None:
        if args.expert_noise:
            raise OtplugError("--expert-noise is the expert's; a --motion recording has no expert")
        res = record_play(args.out, domain=args.domain, region=args.region, n_episodes=args.episodes, seed=args.seed,
                          scene_seed=args.scene_seed, image_size=args.image_size, max_steps=args.max_steps,
                          fps=args.fps, use_videos=args.video, repo_id=args.repo_id, motion=args.motion)
        print(f"wrote {res.episodes} episodes ({res.frames} frames, {args.motion} motion, no actions) to {res.root} "
              f"[repo_id {res.repo_id}]", file=sys.stdout)
        return 0
    res = record_demos(args.out, domain=args.domain, region=args.region, n_episodes=args.episodes, seed=args.seed,
                       scene_seed=args.scene_seed, image_size=args.image_size, max_steps=args.max_steps,
                       fps=args.fps, use_videos=args.video, repo_id=args.repo_id, expert_noise=args.expert_noise)
    print(f"wrote {res.episodes} episodes ({res.frames} frames, expert success {res.successes}/{res.episodes}) "
          f"to {res.root} [repo_id {res.repo_id}]", file=sys.stdout)
    return 0
