"""The sim/real LeRobot dataset pair of the embedded demo (``otplug train --demo``): the reach benchmark's.

The task is :mod:`otplug.bench`'s "reach the goal", recorded with its scripted expert by
:func:`otplug.bench.record.record_demos` (the one renderer and the one expert of the task). Each frame stores

* ``observation.state`` — float32 ``(2,)``: the agent's x, y (the goal is not in the state);
* ``observation.images.front`` — uint8 ``(H, W, 3)`` PNG: the scene, in which the goal is drawn;
* ``action`` — float32 ``(2,)``: the expert's velocity command in ``[-1, 1]``.

The *sim* side is the benchmark's ``SIM`` domain, the *real* side its ``REAL`` domain (another palette, a checkered
table, dimmer with a lighting gradient, pixel noise, a camera shifted by a few pixels; a weaker actuator with
inertia, action noise and one step of latency: :data:`otplug.bench.env.REAL`). Both sides hold ``n_episodes``
episodes of exactly ``max_steps`` frames (the benchmark's episodes always run to ``max_steps``: reach, then hold),
the task string :data:`otplug.bench.env.TASK`, goals anywhere on the table (region ``"all"``), and the same
scene seed: episode ``i`` of both sides starts from the same scene (agent start, goal), as when real
demonstrations replay the sim task configurations, so the DTW pairing has a true partner to find.

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

from otplug.atomic import save_text
from otplug.bench.record import RECORD_VERSION, record_demos
from otplug.lerobot.datasets import open_dataset
from otplug.lerobot.dtw import compute_pair_info
from otplug.lerobot.pair_info import save_pair_info

__all__ = [
    "GENERATOR_VERSION",
    "DemoData",
    "default_cache_dir",
    "ensure_demo_datasets",
    "generate_demo_datasets",
]

#: Bump whenever the generator's output changes -- a change of otplug.bench's rendering, dynamics or expert too; a
#: cache with another stamp is regenerated (the stamp also holds otplug.bench.record.RECORD_VERSION). 4: the pair
#: is the reach benchmark's, recorded by otplug.bench.record; 3 and before: the demo's own renderer and expert.
GENERATOR_VERSION = 4
SIM_REPO_ID = "otplug/demo_sim"
REAL_REPO_ID = "otplug/demo_real"
_STAMP = "otplug-demo.json"


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


def generate_demo_datasets(out_dir: str | Path, *, n_episodes: int = 20, max_steps: int = 40, image_size: int = 64,
                           fps: int = 10, seed: int = 0, pair_info: bool = True) -> DemoData:
    """Write the demo pair into ``out_dir/sim`` and ``out_dir/real`` (no caching; both must be new or empty).

    ``seed`` is the scene seed of both sides (and the noise seed of the real side's pixel and action noise).
    With ``pair_info=True`` also writes ``out_dir/pair_info.json``: DTW on ``observation.state`` without
    normalisation (``normalize="none"``, as ``otplug study`` does): both domains report the agent's position in the
    same world coordinates, and the path towards the goal is what tells the episodes apart (see
    :func:`otplug.lerobot.dtw.compute_pair_info`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(region="all", n_episodes=n_episodes, seed=seed, scene_seed=seed, image_size=image_size,
              max_steps=max_steps, fps=fps)
    record_demos(out / "sim", domain="sim", repo_id=SIM_REPO_ID, **kw)
    record_demos(out / "real", domain="real", repo_id=REAL_REPO_ID, **kw)
    pair_path = None
    if pair_info:
        sim = open_dataset(SIM_REPO_ID, out / "sim")
        real = open_dataset(REAL_REPO_ID, out / "real")
        pair_path = out / "pair_info.json"
        save_pair_info(compute_pair_info(sim, real, key="observation.state", normalize="none"), pair_path)
    return DemoData(SIM_REPO_ID, out / "sim", REAL_REPO_ID, out / "real", pair_path)


def _is_complete(d: Path, stamp: dict) -> bool:
    try:
        return json.loads((d / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def ensure_demo_datasets(cache_dir: str | Path | None = None, *, n_episodes: int = 20, max_steps: int = 40,
                         image_size: int = 64, force: bool = False, fps: int = 10, seed: int = 0) -> DemoData:
    """Return the cached demo pair, generating it first when needed.

    The cache lives in ``cache_dir`` (default :func:`default_cache_dir`) under a folder named after the generator
    version and the parameters. A folder counts as complete only when its stamp file (written last) matches the
    generator version and parameters; generation happens in a temporary sibling folder that is renamed into place,
    so an interrupted run never leaves a half-written cache behind (and a stale or half-written folder is replaced).
    ``force=True`` regenerates. Works offline; 2 x 20 episodes x 40 frames at 64 px take ~8 s on 2 CPU cores.
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stamp = {"generator_version": GENERATOR_VERSION, "record_version": RECORD_VERSION, "n_episodes": n_episodes,
             "max_steps": max_steps, "image_size": image_size, "fps": fps, "seed": seed}
    final = base / f"v{GENERATOR_VERSION}-e{n_episodes}-steps{max_steps}-px{image_size}-fps{fps}-s{seed}"
    result = DemoData(SIM_REPO_ID, final / "sim", REAL_REPO_ID, final / "real", final / "pair_info.json")
    if not force and _is_complete(final, stamp):
        return result
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=base))
    try:
        generate_demo_datasets(tmp, n_episodes=n_episodes, max_steps=max_steps, image_size=image_size, fps=fps,
                               seed=seed)
        # written last (atomically): marks the folder complete
        save_text(tmp / _STAMP, json.dumps(stamp), "the demo cache's stamp")
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
