"""Where a training step's time goes, before and after the speed work, against lerobot-train's own loop.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_time.py [--steps 30] [--warmup 5] [--kinds png video]
                                                               [--data DIR] [--json out.json]

One process, one thread (``--threads``), the study's policy and batch sizes (``otplug.bench.study``: a small ACT,
16 BC rows, 8 OT pairs, 32 px images) on the study's data (20 "real" episodes of region A, 100 "sim" episodes) stored
as PNG and again as video (AV1 MP4, decoded with PyAV). For each storage:

* ``lerobot-train``: lerobot's own ``lerobot_train.train()`` on the real dataset (BC), the reference;
* ``bc``, ``cotrain``, ``cotrain+ot``: ``otplug train`` (target-only BC; BC on real + sim rows with the DTW-paired
  rows, no OT loss; the same with the study's recommended OT loss), each **before** (``--ot.frame_cache=disk
  --ot.optimizer_impl=lerobot``: what lerobot-train does) and **after** (``--ot.frame_cache=memory
  --ot.optimizer_impl=fused``); ``cotrain`` and ``cotrain+ot`` also **bf16** (after + ``--policy.use_amp=true
  --ot.memory_format=channels_last``: bf16 autocast, the OT plan still float32) and **bf16 contiguous** (autocast
  alone), with their ratio against the float32 "after" row (``--no-bf16`` skips them).

Each step is split by timing the calls of the step itself: ``data`` (the dataloader, the pair batch and the
preprocessor: everything between two steps), ``forward`` (the policy's BC forward, embeddings captured),
``ot`` (the OT loss: costs, solve, plan), ``backward``, ``optimizer`` (``optimizer.step`` + ``zero_grad``) and
``rest`` (grad clipping, the finiteness vote, metrics). Medians over the timed steps after ``--warmup`` steps.
The ratios printed are against the same method's "before" (the bf16 rows: its "after") and against lerobot-train's step.
Numbers vary by machine and load: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

PHASES = ("data", "forward", "ot", "backward", "optimizer", "rest")


class _Timer:
    """Wraps callables of the objects the step uses (instance attributes) and sums their time per step."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self._wrapped: set[int] = set()
        self._last_exit: float | None = None

    def wrap(self, obj, attr: str, phase: str) -> None:
        if obj is None or id(obj) in self._wrapped and hasattr(getattr(obj, attr), "_timed"):
            return
        fn = getattr(obj, attr)
        if getattr(fn, "_timed", False):
            return

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.acc[phase] = self.acc.get(phase, 0.0) + time.perf_counter() - t

        timed._timed = True  # type: ignore[attr-defined]
        setattr(obj, attr, timed)
        self._wrapped.add(id(obj))

    def around_update(self, update):
        def run(*a, **k):
            t0 = time.perf_counter()
            data = t0 - self._last_exit if self._last_exit is not None else float("nan")
            self.acc = {}
            out = update(*a, **k)
            t1 = time.perf_counter()
            row = {"data": data, **{p: self.acc.get(p, 0.0) for p in PHASES[1:-1]}}
            row["rest"] = (t1 - t0) - sum(row[p] for p in PHASES[1:-1])
            self.steps.append(row)
            self._last_exit = t1
            return out
        return run


def _medians(steps: list[dict[str, float]], warmup: int) -> dict[str, float]:
    timed = steps[warmup + 1:]  # the first step's "data" has no previous step
    out = {p: statistics.median(s[p] for s in timed) for p in PHASES}
    out["step"] = statistics.median(sum(s[p] for p in PHASES) for s in timed)
    return out


def run_otplug(args: list[str], warmup: int) -> dict[str, float]:
    import otplug.lerobot.train.loop as loop
    from otplug.lerobot.train import main
    from otplug.lerobot.train.step import update_policy as real_update

    timer = _Timer()

    def update(policy, batch, n_pairs, **kw):
        timer.wrap(policy, "forward", "forward")
        timer.wrap(kw.get("ot_side"), "loss", "ot")
        timer.wrap(kw["accelerator"], "backward", "backward")
        timer.wrap(kw["optimizer"], "step", "optimizer")
        timer.wrap(kw["optimizer"], "zero_grad", "optimizer")
        return real_update(policy, batch, n_pairs, **kw)

    loop.update_policy = timer.around_update(update)
    from accelerate.state import AcceleratorState

    # accelerate keeps one state per process, fixed by the first Accelerator (its mixed precision included): each
    # run here builds its own, as a fresh process would (a bf16 row after a float32 one)
    AcceleratorState._reset_state(True)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            rc = main(args)
    finally:
        loop.update_policy = real_update
    if rc != 0:
        raise SystemExit(f"otplug train failed: {' '.join(args)}")
    return _medians(timer.steps, warmup)


def run_lerobot_train(args: list[str], warmup: int) -> dict[str, float]:
    from lerobot.scripts import lerobot_train

    timer = _Timer()
    original = lerobot_train.update_policy

    def update(train_metrics, policy, batch, optimizer, grad_clip_norm, accelerator, *a, **kw):
        timer.wrap(policy, "forward", "forward")
        timer.wrap(accelerator, "backward", "backward")
        timer.wrap(optimizer, "step", "optimizer")
        timer.wrap(optimizer, "zero_grad", "optimizer")
        return original(train_metrics, policy, batch, optimizer, grad_clip_norm, accelerator, *a, **kw)

    lerobot_train.update_policy = timer.around_update(update)
    argv = sys.argv
    sys.argv = ["lerobot-train", *args]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            lerobot_train.train()
    finally:
        sys.argv = argv
        lerobot_train.update_policy = original
    return _medians(timer.steps, warmup)


def make_data(root: Path, kind: str, sim_episodes: int | None = None) -> dict[str, Path]:
    """The study's datasets (StudyConfig defaults, or ``sim_episodes`` sim demos) as PNG
    (``otplug.bench.study.ensure_data``) or as video."""
    from otplug.bench.study import ensure_data
    from otplug.bench.study_config import StudyConfig

    cfg = StudyConfig() if sim_episodes is None else StudyConfig(sim_episodes=sim_episodes)
    if kind == "png":
        return ensure_data(root / f"png_{cfg.sim_episodes}", cfg)
    from otplug.bench.record import record_demos
    from otplug.lerobot.datasets import open_dataset
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info

    data = root / f"video_{cfg.sim_episodes}"
    paths = {"real": data / "real_A", "sim": data / "sim_all", "pair_info": data / "pair_info.json",
             "frame_cache": data / "frame_cache"}
    if not paths["pair_info"].is_file():
        record_demos(paths["real"], domain="real", region="A", n_episodes=cfg.real_episodes, seed=cfg.data_seed,
                     scene_seed=cfg.data_seed, image_size=cfg.image_size, use_videos=True,
                     repo_id="otplug/study_real_A")
        record_demos(paths["sim"], domain="sim", region="all", n_episodes=cfg.sim_episodes, seed=cfg.data_seed + 1,
                     scene_seed=cfg.data_seed + 1000, image_size=cfg.image_size, use_videos=True,
                     repo_id="otplug/study_sim_all")
        real = open_dataset("otplug/study_real_A", paths["real"])
        sim = open_dataset("otplug/study_sim_all", paths["sim"])
        save_pair_info(compute_pair_info(sim, real, key="observation.state", normalize="none", top_k=5),
                       paths["pair_info"])
    return paths


def variants(paths: dict[str, Path], ot_config: Path, steps: int, out: Path,
             bf16: bool = True) -> dict[str, list[str]]:
    from otplug.bench.study import method_args, policy_args
    from otplug.bench.study_config import StudyConfig

    cfg = StudyConfig(steps=steps)
    base = [a for a in policy_args(cfg) if not a.startswith(("--log_freq", "--save_freq"))]
    base += ["--log_freq=1000", "--save_checkpoint=false"]
    methods = {"bc": "target-only", "cotrain": "cotrain", "cotrain+ot": "cotrain-ot"}
    speed = {"before": ["--ot.frame_cache=disk", "--ot.optimizer_impl=lerobot"],
             "after": ["--ot.frame_cache=memory", "--ot.optimizer_impl=fused"]}
    # the mixed-precision path (issue #28): "after" + bf16 autocast, with and without channels_last conv weights
    speed["bf16"] = [*speed["after"], "--policy.use_amp=true", "--ot.memory_format=channels_last"]
    speed["bf16 contiguous"] = [*speed["after"], "--policy.use_amp=true"]
    runs = {}
    for name, method in methods.items():
        # the study keeps decoded rows in a store between its runs; here every run decodes (or reads) its own
        margs = [a for a in method_args(method, paths, cfg, ot_config) if not a.startswith("--ot.frame_cache_dir")]
        for when, extra in speed.items():
            if when.startswith("bf16") and (name == "bc" or not bf16):
                continue
            runs[f"{name} {when}"] = [*base, *margs, "--ot.diag_every=0", "--ot.sinks=[]", *extra,
                                      f"--output_dir={out / name.replace('+', '_')}_{when.replace(' ', '_')}"]
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="steps per run (the first --warmup are not timed)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kinds", nargs="+", default=["png", "video"], choices=["png", "video"])
    p.add_argument("--data", help="folder for the datasets (kept; default: a temporary folder)")
    p.add_argument("--sim-episodes", type=int, help="sim demos (default: the study's; docs/training.md's table: 100)")
    p.add_argument("--json", help="write the medians here")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows (on a CPU without native bf16 "
                                                          "they are emulated and slow)")
    a = p.parse_args(argv)
    if a.steps <= a.warmup + 2:
        raise SystemExit("--steps must exceed --warmup by at least 3")
    import torch

    torch.set_num_threads(a.threads)
    from otplug.bench.study_config import RECOMMENDED_OT

    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(a.data).expanduser() if a.data else Path(tmp) / "data"
        ot_config = Path(tmp) / "ot.json"
        ot_config.write_text(json.dumps(RECOMMENDED_OT))
        for kind in a.kinds:
            print(f"== {kind}: recording the study's datasets ...", file=sys.stderr, flush=True)
            paths = make_data(data_root, kind, a.sim_episodes)
            out = Path(tmp) / "runs" / kind
            res: dict[str, dict[str, float]] = {}
            ref = [f"--dataset.repo_id=otplug/study_real_A", f"--dataset.root={paths['real']}",
                   *[x for x in variants(paths, ot_config, a.steps, out)["bc before"]
                     if not x.startswith(("--ot.", "--output_dir", "--dataset."))],
                   "--dataset.video_backend=pyav", f"--output_dir={out / 'lerobot_train'}"]
            res["lerobot-train"] = run_lerobot_train(ref, a.warmup)
            for name, args in variants(paths, ot_config, a.steps, out, bf16=not a.no_bf16).items():
                print(f"   {name} ...", file=sys.stderr, flush=True)
                res[name] = run_otplug(args, a.warmup)
            results[kind] = res
            _print(kind, res, a)
    if a.json:
        Path(a.json).write_text(json.dumps({"threads": a.threads, "steps": a.steps, "warmup": a.warmup,
                                            "torch": torch.__version__, "results": results}, indent=2))
    return 0


def _print(kind: str, res: dict[str, dict[str, float]], a) -> None:
    ref = res["lerobot-train"]["step"]
    print(f"\n{kind} datasets, {a.threads} thread(s), median of {a.steps - a.warmup - 1} steps (ms):")
    head = f"{'run':18s}" + "".join(f"{p:>10s}" for p in (*PHASES, "step")) + f"{'vs before':>11s}{'vs lerobot':>11s}"
    print(head)
    for name, m in res.items():
        before = res.get(name.replace(" after", " before")) if name.endswith("after") else None
        if " bf16" in name:  # against the same method's float32 fast path
            before = res.get(name.split(" bf16")[0] + " after")
        vb = f"{before['step'] / m['step']:.2f}x" if before else ""
        print(f"{name:18s}" + "".join(f"{1000 * m[p]:10.1f}" for p in (*PHASES, "step"))
              + f"{vb:>11s}{ref / m['step']:>10.2f}x")
    co_b, co_a = res.get("cotrain before"), res.get("cotrain after")
    ot_b, ot_a = res.get("cotrain+ot before"), res.get("cotrain+ot after")
    if co_b and ot_b and co_a and ot_a:
        print(f"OT over the co-training step: before {ot_b['step'] / co_b['step'] - 1:+.1%}, "
              f"after {ot_a['step'] / co_a['step'] - 1:+.1%}; cotrain+ot after/before speed-up "
              f"{ot_b['step'] / ot_a['step']:.2f}x")
    for name in ("cotrain", "cotrain+ot"):
        fp32, bf16 = res.get(f"{name} after"), res.get(f"{name} bf16")
        if fp32 and bf16:
            print(f"{name}: bf16 autocast + channels_last over float32 (both 'after'): "
                  f"{fp32['step'] / bf16['step']:.2f}x faster (forward {fp32['forward'] / bf16['forward']:.2f}x, "
                  f"backward {fp32['backward'] / bf16['backward']:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
