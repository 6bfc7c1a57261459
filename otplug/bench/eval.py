"""Closed-loop evaluation on the reach task (``otplug eval``).

:func:`load_policy` loads a lerobot checkpoint the way ``lerobot-eval`` does (policy class from the saved config,
``from_pretrained``, the saved pre/post-processor pipelines with the device overridden). :func:`rollout` plays
a batch of episodes with any policy-like object (``reset()`` and ``select_action(batch)``): each step the raw
observation goes through lerobot's env preprocessing (images -> float [0, 1] CHW, ``agent_pos`` ->
``observation.state``, the task string), then the policy's preprocessor, ``select_action``, the postprocessor.
A scripted policy that sets ``needs_env_state = True`` (the expert) also gets the true state in
``batch["env_state"]``. :func:`evaluate` runs ``episodes`` episodes in batches; episode ``e`` uses episode
seed ``seed + e``, as ``lerobot-eval --seed=seed`` does.

``otplug eval --policy PATH --domain real|sim --region A|B|all --episodes N`` prints the success rate with a
95 % Wilson interval and writes ``eval.json`` and ``frames.png`` (a strip of a few episodes) to the output dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from otplug.atomic import save_file, save_text, writing
from otplug.bench.env import (
    CAMERA,
    CAMERA_KEY,
    REGIONS,
    TASK,
    BatchReachEnv,
    DomainParams,
    get_domain,
    in_region_a,
)
from otplug.errors import OtplugError

__all__ = [
    "EvalResult",
    "LoadedPolicy",
    "evaluate",
    "load_policy",
    "main",
    "resolve_checkpoint",
    "rollout",
    "run_eval",
    "to_policy_batch",
    "write_frame_strip",
]

DEFAULT_SEED = 1000  # lerobot-eval's default --seed
STATE_KEY = "observation.state"


class EvalError(OtplugError):
    """The policy could not be loaded or evaluated."""


# ---------------------------------------------------------------------------------------------------------------------
# rollout


def to_policy_batch(obs: Mapping[str, Any], n: int) -> dict[str, Any]:
    """Raw env observation -> lerobot policy batch, as ``lerobot.envs.utils.preprocess_observation`` does
    (uint8 HWC images -> float32 [0, 1] CHW; ``agent_pos`` -> ``observation.state``), plus ``task``."""
    import torch

    batch: dict[str, Any] = {}
    for cam, img in obs["pixels"].items():
        t = torch.from_numpy(np.ascontiguousarray(img))
        if t.ndim == 3:
            t = t.unsqueeze(0)
        batch[f"observation.images.{cam}"] = t.permute(0, 3, 1, 2).contiguous().float() / 255.0
    state = torch.from_numpy(np.asarray(obs["agent_pos"])).float()
    batch[STATE_KEY] = state if state.ndim == 2 else state.unsqueeze(0)
    batch["task"] = [TASK] * n
    return batch


def _to_numpy(action: Any, n: int) -> np.ndarray:
    if hasattr(action, "detach"):
        action = action.detach().float().cpu().numpy()
    action = np.asarray(action, dtype=np.float64)
    if action.ndim != 2 or action.shape[0] != n or action.shape[1] < 2:
        raise EvalError(f"the policy returned actions of shape {tuple(action.shape)}; the reach task needs ({n}, 2)")
    return action[:, :2]


def rollout(policy: Any, env: BatchReachEnv, episode_seeds: Sequence[int], *, preprocessor: Any = None,
            postprocessor: Any = None, keep_frames: int = 0) -> dict[str, Any]:
    """Play one batch of episodes (``len(episode_seeds) == env.num_envs``) until all are done.

    Returns ``success`` (bool (N,)), ``steps`` (int (N,)), ``actions`` (float (N, T, 2): the commands sent at each
    of the T steps run; rows of finished episodes keep being filled and are ignored by the env), ``final_pos`` and
    ``goal`` (float (N, 2): where each agent ended, and its goal) and, for the first ``keep_frames`` episodes,
    ``frames``: a list of uint8 (T_i + 1, H, W, 3) arrays (every observation the policy saw, plus the final one).
    """
    import torch

    obs, _ = env.reset(episode_seeds)
    policy.reset()
    n = env.num_envs
    keep = min(keep_frames, n)
    frames: list[list[np.ndarray]] = [[obs["pixels"][CAMERA][i]] for i in range(keep)]
    needs_state = bool(getattr(policy, "needs_env_state", False))
    actions: list[np.ndarray] = []
    while not env.done.all():
        batch = to_policy_batch(obs, n)
        if needs_state:
            batch["env_state"] = torch.from_numpy(env.privileged_state())
        if preprocessor is not None:
            batch = preprocessor(batch)
        with torch.inference_mode():
            action = policy.select_action(batch)
        if postprocessor is not None:
            action = postprocessor(action)
        live = ~env.done
        actions.append(_to_numpy(action, n))
        obs, *_ = env.step(actions[-1])
        for i in range(keep):
            if live[i]:
                frames[i].append(obs["pixels"][CAMERA][i])
    state = env.privileged_state()
    return {"success": env.success.copy(), "steps": env.steps.copy(),
            "final_pos": state[:, 0:2].copy(), "goal": state[:, 4:6].copy(),
            "actions": np.stack(actions, axis=1) if actions else np.zeros((n, 0, 2)),
            "frames": [np.stack(f) for f in frames]}


@attrs.frozen
class EvalResult:
    domain: str
    region: str
    episodes: int
    successes: int
    seed: int
    success: np.ndarray = attrs.field(eq=False, repr=False)  # bool (episodes,)
    steps: np.ndarray = attrs.field(eq=False, repr=False)  # int (episodes,)
    frames: list = attrs.field(factory=list, eq=False, repr=False)
    wall_s: float = 0.0
    # bool (episodes,): the agent ended on the other region's side of the goal (x of the other sign): the policy
    # took it to the wrong part of the table, not merely short of the goal
    ended_other_side: np.ndarray = attrs.field(factory=lambda: np.zeros(0, bool), eq=False, repr=False)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        from otplug.stats import wilson_interval  # one policy's episode noise (otplug.stats: the one home)

        return wilson_interval(self.successes, self.episodes)

    @property
    def episodes_per_minute(self) -> float:
        return 60.0 * self.episodes / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def other_side_rate(self) -> float:
        """The fraction of episodes that ended on the other region's side (NaN when not recorded)."""
        n = len(self.ended_other_side)
        return float(self.ended_other_side.mean()) if n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ci95
        ok = self.success.astype(bool)
        return {
            "domain": self.domain, "region": self.region, "episodes": self.episodes, "successes": self.successes,
            "success_rate": self.success_rate, "ci95": [lo, hi], "ci95_method": "wilson", "seed": self.seed,
            "ended_other_side": int(self.ended_other_side.sum()) if len(self.ended_other_side) else None,
            "mean_steps_success": float(self.steps[ok].mean()) if ok.any() else None,
            "wall_s": round(self.wall_s, 3), "episodes_per_minute": round(self.episodes_per_minute, 1),
            "episode_success": [bool(x) for x in ok],
        }


def evaluate(policy: Any, *, domain: str | DomainParams = "real", region: str = "all", episodes: int = 100,
             seed: int = DEFAULT_SEED, batch: int = 50, image_size: int = 32, max_steps: int = 40,
             preprocessor: Any = None, postprocessor: Any = None, keep_frames: int = 4,
             noise_seed: int = 0) -> EvalResult:
    """Evaluate ``policy`` on ``episodes`` episodes (episode ``e`` has episode seed ``seed + e``)."""
    dom = get_domain(domain)
    if region not in REGIONS:
        raise EvalError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    if episodes < 1 or batch < 1:
        raise EvalError(f"episodes and batch must be >= 1 (got {episodes}, {batch})")
    if hasattr(policy, "eval"):
        policy.eval()
    t0 = time.perf_counter()
    success, steps, frames, other = [], [], [], []
    for start in range(0, episodes, batch):
        seeds = [seed + e for e in range(start, min(episodes, start + batch))]
        env = BatchReachEnv(len(seeds), dom, region, image_size=image_size, max_steps=max_steps,
                            noise_seed=noise_seed)
        out = rollout(policy, env, seeds, preprocessor=preprocessor, postprocessor=postprocessor,
                      keep_frames=max(0, keep_frames - len(frames)))
        success.append(out["success"])
        steps.append(out["steps"])
        frames += out["frames"]
        other.append(in_region_a(out["final_pos"]) != in_region_a(out["goal"]))
    s = np.concatenate(success)
    return EvalResult(dom.name, region, episodes, int(s.sum()), seed, s, np.concatenate(steps), frames,
                      time.perf_counter() - t0, np.concatenate(other))


# ---------------------------------------------------------------------------------------------------------------------
# loading lerobot checkpoints


def _is_pretrained_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and (p / "model.safetensors").is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """The ``pretrained_model`` folder for ``path``: that folder itself, a ``checkpoints/<step>`` folder above it,
    or a training run folder (``checkpoints/last/pretrained_model``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EvalError(f"policy path {p} does not exist")
    for cand in (p, p / "pretrained_model", p / "checkpoints" / "last" / "pretrained_model"):
        if cand.is_dir() and _is_pretrained_dir(cand):
            return cand
    raise EvalError(f"{p} is not a lerobot checkpoint (no config.json + model.safetensors in it, in "
                    "pretrained_model/ or in checkpoints/last/pretrained_model/)")


@attrs.frozen
class LoadedPolicy:
    policy: Any
    preprocessor: Any
    postprocessor: Any
    path: Path
    policy_type: str
    device: str
    image_size: int


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError("--device cuda asked for, but torch sees no CUDA device")
    return device


def _check_features(cfg: Any, path: Path) -> int:
    """The policy's inputs must be the reach task's; returns the image size it expects."""
    feats = dict(getattr(cfg, "input_features", None) or {})
    images = {k: v for k, v in feats.items() if k.startswith("observation.image")}
    others = {k: v for k, v in feats.items() if k not in images}
    problems = []
    unknown_images = sorted(set(images) - {CAMERA_KEY})
    if unknown_images:
        problems.append(f"cameras {unknown_images} (the reach task has only {CAMERA_KEY})")
    for k, v in others.items():
        if k != STATE_KEY:
            problems.append(f"input {k!r}")
        elif tuple(v.shape) != (2,):
            problems.append(f"{STATE_KEY} of shape {tuple(v.shape)} (the reach task's is (2,))")
    out = dict(getattr(cfg, "output_features", None) or {})
    act = out.get("action")
    if act is None or tuple(act.shape) != (2,):
        problems.append(f"actions of shape {None if act is None else tuple(act.shape)} (the reach task's are (2,))")
    if problems:
        raise EvalError(f"the policy at {path} was not trained on the reach task: it expects " + "; ".join(problems))
    if CAMERA_KEY in images:
        shape = tuple(images[CAMERA_KEY].shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise EvalError(f"the policy at {path} expects {CAMERA_KEY} of shape {shape}; the reach task renders "
                            "square images (3, S, S)")
        return int(shape[1])
    return 32


def load_policy(path: str | Path, device: str = "auto") -> LoadedPolicy:
    """Load a lerobot checkpoint with its saved processors (as ``lerobot-eval`` does), on ``device``."""
    ckpt = resolve_checkpoint(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = _pick_device(device)
    from otplug.lerobot.datasets import quiet_lerobot

    quiet_lerobot()
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    try:
        cfg = PreTrainedConfig.from_pretrained(ckpt)
    except Exception as exc:  # draccus / json errors: name the file
        raise EvalError(f"{ckpt / 'config.json'} is not a lerobot policy config: {type(exc).__name__}: {exc}") from exc
    image_size = _check_features(cfg, ckpt)
    cfg.pretrained_path = ckpt
    cfg.device = dev
    try:
        policy_cls = get_policy_class(cfg.type)
        policy = policy_cls.from_pretrained(ckpt, config=cfg)
        policy.to(dev)
        policy.eval()
        pre, post = make_pre_post_processors(
            policy_cfg=cfg, pretrained_path=str(ckpt),
            preprocessor_overrides={"device_processor": {"device": dev}},
        )
    except OtplugError:
        raise
    except Exception as exc:
        raise EvalError(f"could not load the policy at {ckpt}: {type(exc).__name__}: {exc}") from exc
    return LoadedPolicy(policy, pre, post, ckpt, cfg.type, dev, image_size)


# ---------------------------------------------------------------------------------------------------------------------
# pictures


def write_frame_strip(frames: Sequence[np.ndarray], success: Sequence[bool], steps: Sequence[int], path: str | Path,
                      *, seeds: Sequence[int] | None = None, columns: int = 8, scale: int = 3,
                      title: str = "") -> Path:
    """One row per episode: ``columns`` frames evenly spaced from the first to the last observation."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    if not frames:
        raise EvalError("no frames to draw")
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    h, w = frames[0].shape[1:3]
    fh, fw = h * scale, w * scale
    pad, head, foot = 6, 18, 14
    row_h = head + fh + foot
    top = 22 if title else 4
    width = pad + columns * (fw + pad) + 4
    canvas = Image.new("RGB", (max(width, 360), top + len(frames) * row_h + pad), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill=(0, 0, 0), font=font)
    for r, ep in enumerate(frames):
        y0 = top + r * row_h
        ok = bool(success[r])
        label = f"episode {r}" + (f" (seed {seeds[r]})" if seeds is not None else "")
        label += f": {'success' if ok else 'failure'} after {int(steps[r])} steps"
        draw.text((pad, y0 + 2), label, fill=(0, 120, 0) if ok else (190, 0, 0), font=font)
        idx = np.unique(np.linspace(0, len(ep) - 1, min(columns, len(ep))).round().astype(int))
        for c, t in enumerate(idx):
            x0 = pad + c * (fw + pad)
            img = Image.fromarray(ep[t]).resize((fw, fh), Image.NEAREST)
            canvas.paste(img, (x0, y0 + head))
            draw.rectangle([x0 - 1, y0 + head - 1, x0 + fw, y0 + head + fh], outline=(120, 120, 120))
            draw.text((x0, y0 + head + fh + 1), f"t={t}", fill=(60, 60, 60), font=font)
    with writing(path, "the frame strip"):
        path.parent.mkdir(parents=True, exist_ok=True)
    save_file(path, canvas.save, "the frame strip")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# command


def _default_output_dir(ckpt: Path, domain: str, region: str, seed: int) -> Path:
    run = ckpt.parent
    for parent in ckpt.parents:
        if parent.name == "checkpoints":
            run = parent.parent
            break
    return run / "eval" / f"{domain}-{region}-seed{seed}"


def run_eval(policy_path: str | Path, *, domain: str, region: str = "all", episodes: int = 100,
             seed: int = DEFAULT_SEED, batch: int = 50, output_dir: str | Path | None = None, device: str = "auto",
             max_steps: int = 40, strip_episodes: int = 4, quiet: bool = False,
             threads: int | None = None) -> dict[str, Any]:
    """Load, evaluate, print a summary and write ``eval.json`` + ``frames.png``; returns the eval.json dict.

    On CPU, torch runs with ``threads`` threads during the evaluation (default: half the cores, at least one):
    on a busy machine torch's default (all cores) was measured 9x slower than one thread for the ACT backbone.
    """
    if domain not in ("real", "sim"):
        raise EvalError(f"unknown domain {domain!r}; choose real or sim")
    if region not in REGIONS:
        raise EvalError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    if episodes < 1:
        raise EvalError(f"--episodes must be >= 1, got {episodes}")
    if batch < 1:
        raise EvalError(f"--batch must be >= 1, got {batch}")
    if threads is not None and threads < 1:
        raise EvalError(f"--threads must be >= 1, got {threads}")
    loaded = load_policy(policy_path, device)
    import torch

    before = torch.get_num_threads()
    n_threads = before
    if loaded.device == "cpu":
        n_threads = threads or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(n_threads)
    try:
        res = evaluate(loaded.policy, domain=domain, region=region, episodes=episodes, seed=seed, batch=batch,
                       image_size=loaded.image_size, max_steps=max_steps, preprocessor=loaded.preprocessor,
                       postprocessor=loaded.postprocessor, keep_frames=strip_episodes)
    finally:
        torch.set_num_threads(before)
    out = Path(output_dir).expanduser() if output_dir else _default_output_dir(loaded.path, domain, region, seed)
    out.mkdir(parents=True, exist_ok=True)
    info = {"policy": str(Path(policy_path)), "checkpoint": str(loaded.path), "policy_type": loaded.policy_type,
            "device": loaded.device, "torch_threads": n_threads, "batch": batch, "image_size": loaded.image_size,
            "max_steps": max_steps,
            **res.to_dict()}
    strip = None
    if res.frames:
        n = len(res.frames)
        strip = write_frame_strip(res.frames, res.success[:n], res.steps[:n], out / "frames.png",
                                  seeds=[seed + i for i in range(n)],
                                  title=f"{loaded.policy_type} on {domain}/{region}: {res.successes}/{episodes}")
        info["frames_png"] = strip.name
    save_text(out / "eval.json", json.dumps(info, indent=2) + "\n", "the evaluation result")
    if not quiet:
        lo, hi = res.ci95
        print(f"{domain}/{region}: success {res.successes}/{episodes} = {res.success_rate:.3f} "
              f"(95% Wilson CI {lo:.3f}-{hi:.3f}); {res.episodes_per_minute:.0f} episodes/min on {loaded.device}")
        print(f"wrote {out / 'eval.json'}" + (f" and {strip}" if strip else ""))
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otplug eval",
                                description="Closed-loop evaluation of a lerobot checkpoint on the reach task.")
    p.add_argument("--policy", required=True,
                   help="checkpoint folder (.../pretrained_model, its checkpoints/<step> parent, or the run folder)")
    p.add_argument("--domain", required=True, help="real or sim")
    p.add_argument("--region", default="all", help="A (goal left), B (goal right) or all (default)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="episode e uses episode seed SEED+e, as lerobot-eval (default %(default)s)")
    p.add_argument("--batch", type=int, default=50, help="episodes stepped together (default %(default)s)")
    p.add_argument("--output-dir",
                   help="where eval.json and frames.png go (default: <run>/eval/<domain>-<region>-seed<S>)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--threads", type=int, help="torch CPU threads while evaluating (default: half the cores)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_eval(args.policy, domain=args.domain, region=args.region, episodes=args.episodes, seed=args.seed,
             batch=args.batch, output_dir=args.output_dir, device=args.device, max_steps=args.max_steps,
             quiet=args.quiet, threads=args.threads)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
