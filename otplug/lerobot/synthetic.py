"""Small synthetic LeRobot datasets of any shape, for tests (:func:`make_dataset`).

Unrelated to any task: by default the values identify the episode and the frame, which makes tests easy to write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from otplug.lerobot.datasets import DatasetError, no_progress_bars, open_dataset, quiet_lerobot

__all__ = ["make_dataset"]


def _features(state_dim: int, action_dim: int, cameras: Sequence[str], image_hw: tuple[int, int], *,
              video: bool = False) -> dict:
    feats: dict = {
        "observation.state": {"dtype": "float32", "shape": (state_dim,), "names": [f"s{i}" for i in range(state_dim)]},
    }
    if action_dim:  # action_dim=0: a camera + state log without actions (a target pool dataset)
        feats["action"] = {"dtype": "float32", "shape": (action_dim,), "names": [f"a{i}" for i in range(action_dim)]}
    for cam in cameras:
        key = cam if cam.startswith("observation.images.") else f"observation.images.{cam}"
        feats[key] = {"dtype": "video" if video else "image", "shape": (image_hw[0], image_hw[1], 3),
                      "names": ["height", "width", "channels"]}
    return feats


def make_dataset(
    root: str | Path,
    *,
    repo_id: str = "test/dataset",
    episode_lengths: Sequence[int] = (10, 12),
    state_dim: int = 4,
    action_dim: int = 2,
    cameras: Sequence[str] = ("front",),
    image_size: int | tuple[int, int] = 8,
    fps: int = 10,
    task: str = "test task",
    seed: int = 0,
    state_fn: Callable[[int, int], np.ndarray] | None = None,
    action_fn: Callable[[int, int], np.ndarray] | None = None,
    image_fn: Callable[[str, int, int], np.ndarray] | None = None,
    open_kwargs: dict | None = None,
    use_videos: bool = False,
):
    """Write a small LeRobot dataset at ``root`` and return it opened read-only. Cameras are stored as PNG images,
    or with ``use_videos=True`` as video (lerobot's encoder; decoded with PyAV).

    By default the values identify the frame, which makes tests easy to write:

    * ``observation.state[0]`` = episode index, ``[1]`` = frame index in the episode, the rest random;
    * ``action[0]`` = episode index, ``[1]`` = frame index (when ``action_dim >= 2``), the rest random;
    * each camera image is filled with ``(episode * 16 + frame) % 256`` plus the camera's ordinal.

    ``action_dim=0`` writes no ``action`` feature (a camera + state log, as a target pool may be).
    ``state_fn(ep, t)`` / ``action_fn(ep, t)`` / ``image_fn(camera_key, ep, t)`` override these.
    ``cameras`` may be short names (``"front"``) or full keys; ``cameras=()`` gives a dataset without images.
    ``open_kwargs`` go to :func:`open_dataset` (e.g. ``delta_timestamps``).
    """
    quiet_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    feats = _features(state_dim, action_dim, cameras, hw, video=use_videos)
    cam_keys = [k for k in feats if k.startswith("observation.images.")]
    rng = np.random.default_rng(seed)

    def _default_vec(dim: int, ep: int, t: int) -> np.ndarray:
        v = rng.standard_normal(dim).astype(np.float32)
        if dim >= 1:
            v[0] = ep
        if dim >= 2:
            v[1] = t
        return v

    ds = LeRobotDataset.create(repo_id, fps, features=feats, root=root, use_videos=use_videos)
    try:
        with no_progress_bars():
            for ep, length in enumerate(episode_lengths):
                if length < 1:
                    raise DatasetError(f"make_dataset: episode {ep} has length {length}; lengths must be >= 1")
                for t in range(length):
                    frame = {
                        "observation.state": np.asarray(
                            state_fn(ep, t) if state_fn else _default_vec(state_dim, ep, t), dtype=np.float32),
                        "task": task,
                    }
                    if action_dim:
                        frame["action"] = np.asarray(
                            action_fn(ep, t) if action_fn else _default_vec(action_dim, ep, t), dtype=np.float32)
                    for ci, key in enumerate(cam_keys):
                        if image_fn is not None:
                            frame[key] = np.asarray(image_fn(key, ep, t), dtype=np.uint8)
                        else:
                            frame[key] = np.full((*hw, 3), (ep * 16 + t + ci) % 256, dtype=np.uint8)
                    ds.add_frame(frame)
                ds.save_episode()
    finally:
        ds.finalize()
    return open_dataset(repo_id, root, **(open_kwargs or {}))
