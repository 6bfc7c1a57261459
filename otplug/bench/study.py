"""``otplug study``: train and evaluate sim-to-real co-training methods on the reach benchmark, with seeds.

Data (recorded once per study folder, deterministic): ``real`` expert demonstrations in region A only (the real
robot's demos cover part of the start states), ``sim`` demonstrations over the whole space (A and B), and their
DTW ``pair_info.json`` (``otplug pair`` on ``observation.state``).

Methods (every one the same policy, steps, batch size and seeds; they differ only in data and loss):

=====================  =============================================================================================
``target-only``        BC on the real demos only
``source-only``        BC on the sim demos only
``cotrain``            BC on real + sim rows (``--ot.bc_source_weight``) plus the DTW-paired rows the OT methods
                       get (``--ot.cotrain_only``): exactly their rows, no OT loss
``cotrain-mmd``        co-training + a linear-kernel MMD between the sim and real image features (mean-embedding
                       matching, :data:`MMD_LINEAR`: the Sinkhorn divergence at a large ``reg``), no pairing used
``cotrain-ot``         co-training + the OT loss (the recommended config, :data:`RECOMMENDED_OT`: the image
                       features' scale held by ``scale_anchor``)
``cotrain-ot-plain``   the same without ``scale_anchor`` (:data:`PLAIN_OT`, the recommended config before it)
``cotrain-ot-noprior`` co-training + OT without the diagonal prior (``heuristic = false``)
``cotrain-ot-l2``      co-training + OT on unit-length image features (``embed_norm = "l2"``), no prior, no anchor
=====================  =============================================================================================

Every trained policy is evaluated in closed loop (:func:`otplug.bench.eval.evaluate`) in the real domain on
regions A and B (and in the sim domain when asked), with the same episode seeds for every method. Outputs in
``--output-dir``: ``study.json`` (one row per method x seed x domain x region), ``study.md`` (means over seeds with
95% intervals), ``study.png`` and ``embeddings/<method>.png`` (PCA of the policy's image features of paired
sim/real frames). A killed study continues where it stopped: finished trainings and evaluations are kept
(each is written atomically), an unfinished training restarts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from otplug.atomic import save_text, writing
from otplug.bench.eval import wilson_interval
from otplug.bench.study_config import (
    DEFAULT_METHODS,
    METHODS,
    MMD_LINEAR,
    PLAIN_OT,
    RECOMMENDED_OT,
    StudyConfig,
    StudyError,
)
from otplug.bench.study_outputs import embedding_picture, write_plot, write_table

__all__ = ["METHODS", "RECOMMENDED_OT", "StudyConfig", "StudyError", "main", "run_study", "summarize_rows"]

# ---------------------------------------------------------------------------------------------------------------------
# data

def _write_json_atomic(path: Path, data: Any) -> None:
    save_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def ensure_data(out: Path, cfg: StudyConfig) -> dict[str, Path]:
    """Record the real (region A) and sim (all) demos and their pair_info once; return their paths."""
    from otplug.bench.record import record_demos
    from otplug.lerobot.datasets import open_dataset
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info

    data = out / "data"
    paths = {"real": data / "real_A", "sim": data / "sim_all", "pair_info": data / "pair_info.json"}
    stamp = data / "complete.json"
    want = {"real_episodes": cfg.real_episodes, "sim_episodes": cfg.sim_episodes, "image_size": cfg.image_size,
            "data_seed": cfg.data_seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return paths
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    record_demos(paths["real"], domain="real", region="A", n_episodes=cfg.real_episodes, seed=cfg.data_seed,
                 scene_seed=cfg.data_seed, image_size=cfg.image_size, repo_id="otplug/study_real_A")
    record_demos(paths["sim"], domain="sim", region="all", n_episodes=cfg.sim_episodes, seed=cfg.data_seed + 1,
                 scene_seed=cfg.data_seed + 1000, image_size=cfg.image_size, repo_id="otplug/study_sim_all")
    real = open_dataset("otplug/study_real_A", paths["real"])
    sim = open_dataset("otplug/study_sim_all", paths["sim"])
    save_pair_info(compute_pair_info(sim, real, key="observation.state", normalize="none", top_k=5),
                   paths["pair_info"])
    _write_json_atomic(stamp, want)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# training

def policy_args(cfg: StudyConfig) -> list[str]:
    """The policy and schedule every method shares: a small ACT, no pretrained weights, CPU unless CUDA."""
    device = "cuda" if _cuda() else "cpu"
    return [
        "--policy.type=act", f"--policy.device={device}", "--policy.push_to_hub=false",
        "--policy.pretrained_backbone_weights=null", "--policy.dim_model=64", "--policy.n_heads=4",
        "--policy.dim_feedforward=128", "--policy.n_encoder_layers=2", "--policy.n_decoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.latent_dim=16", "--policy.chunk_size=8",
        "--policy.n_action_steps=8", "--policy.optimizer_lr=3e-4", "--policy.optimizer_lr_backbone=3e-4",
        f"--batch_size={cfg.batch_size}", "--num_workers=0", f"--steps={cfg.steps}", f"--log_freq={max(cfg.steps // 20, 1)}",
        f"--save_freq={cfg.steps}", "--wandb.enable=false", "--dataset.video_backend=pyav",
    ]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def method_args(method: str, paths: dict[str, Path], cfg: StudyConfig, ot_config: Path) -> list[str]:
    real = ["--dataset.repo_id=otplug/study_real_A", f"--dataset.root={paths['real']}"]
    sim_as_target = ["--dataset.repo_id=otplug/study_sim_all", f"--dataset.root={paths['sim']}"]
    source = ["--ot.source_repo_id=otplug/study_sim_all", f"--ot.source_root={paths['sim']}"]
    mix = [f"--ot.bc_source_weight={cfg.bc_source_weight}"]
    ot = [f"--ot.pair_info={paths['pair_info']}", f"--ot.lambda_ot={cfg.lambda_ot}", "--ot.layout=single-pass",
          f"--ot.batch_size={cfg.ot_batch_size}", "--ot.top_k=1", "--ot.sinks=[plan-heatmap]",
          f"--ot.plan_every={max(cfg.steps // 4, 1)}"]
    if method == "target-only":
        return real + ["--ot.enabled=false"]
    if method == "source-only":
        return sim_as_target + ["--ot.enabled=false"]
    if method == "cotrain":
        # the same rows as the OT methods (mixture + DTW-paired sim/real rows), no OT loss: only the loss differs
        return real + source + mix + ot + ["--ot.cotrain_only=true", "--ot.sinks=[]"]
    if ot_config_for(method) is not None:
        return real + source + mix + ot + [f"--ot.config={ot_config}"]
    raise StudyError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")


def ot_config_for(method: str) -> dict[str, Any] | None:
    if method == "cotrain-mmd":
        return MMD_LINEAR
    if method == "cotrain-ot":
        return RECOMMENDED_OT
    if method == "cotrain-ot-plain":
        return PLAIN_OT
    if method == "cotrain-ot-noprior":
        return {**RECOMMENDED_OT, "heuristic": False}
    if method == "cotrain-ot-l2":  # unit-length image features (gradient through the norm), no prior, no anchor
        terms = [{**t, "embed_norm": "l2"} if t["type"] == "image" else t for t in PLAIN_OT["terms"]]
        return {**PLAIN_OT, "heuristic": False, "terms": terms}
    return None


def _train(run_dir: Path, args: list[str], log: Path, threads: int = 0) -> dict[str, Any]:
    """One training in a child process (memory is returned after each run); returns train_summary.json.
    ``threads`` > 0 pins the child's intra-op threads (several trainings side by side must not oversubscribe the
    cores: OpenMP spin-waiting then costs 10x)."""
    import shutil

    summary = run_dir / "train_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run restarts from scratch
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "otplug", "train", f"--output_dir={run_dir}", *args]
    with writing(log, "the training log"), log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0 or not summary.is_file():
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
        raise StudyError(f"training {run_dir} failed (exit {rc}): {tail[0] if tail else 'no output'}; log: {log}")
    return json.loads(summary.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# evaluation and summary

def _evaluate(ckpt: Path, domain: str, region: str, cfg: StudyConfig, out: Path, loaded: Any) -> dict[str, Any]:
    from otplug.bench.eval import evaluate

    if out.is_file():
        return json.loads(out.read_text())
    res = evaluate(loaded.policy, domain=domain, region=region, episodes=cfg.eval_episodes, seed=100_000,
                   batch=min(cfg.eval_episodes, 100), image_size=cfg.image_size, preprocessor=loaded.preprocessor,
                   postprocessor=loaded.postprocessor, keep_frames=0)
    row = {"domain": domain, "region": region, "episodes": res.episodes, "successes": res.successes,
           "success_rate": res.success_rate, "seconds": round(res.wall_s, 2)}
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out, row)
    return row


def summarize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method x domain x region: pooled success over seeds and episodes with a 95% Wilson interval, the
    per-seed rates, and (with >= 2 seeds) a t interval of the seed means."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["domain"], r["region"]), []).append(r)
    out = []
    for (method, domain, region), rs in cells.items():
        s, n = sum(r["successes"] for r in rs), sum(r["episodes"] for r in rs)
        lo, hi = wilson_interval(s, n)
        rates = [r["success_rate"] for r in sorted(rs, key=lambda r: r["seed"])]
        cell = {"method": method, "domain": domain, "region": region, "seeds": len(rs), "episodes": n,
                "successes": s, "success_rate": s / n, "ci95": [lo, hi], "per_seed": rates}
        if len(rates) >= 2:
            from statistics import mean, stdev

            t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(rates), 2.262)
            half = t * stdev(rates) / math.sqrt(len(rates))
            cell["seed_mean_ci95"] = [max(0.0, mean(rates) - half), min(1.0, mean(rates) + half)]
        out.append(cell)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda c: (order.get(c["method"], 99), c["domain"], c["region"]))


# ---------------------------------------------------------------------------------------------------------------------
# the study

def _train_all(runs: list[tuple], jobs: int, say: Any) -> int:
    """Every unfinished training, ``jobs`` side by side (0: 2 on a CPU, 1 on CUDA) with the cores split between
    them; returns the number of jobs used."""
    from concurrent.futures import ThreadPoolExecutor

    n_jobs = max(1, jobs if jobs else (1 if _cuda() else min(2, os.cpu_count() or 1)))
    threads = 0 if n_jobs == 1 else max(1, (os.cpu_count() or 1) // n_jobs)

    def _one(run: tuple) -> None:
        method, seed, run_dir, args = run
        t1 = time.perf_counter()
        done = (run_dir / "train_summary.json").is_file()
        _train(run_dir, args, run_dir.parent / f"seed{seed}.log", threads)
        if not done:
            say(f"trained {method} seed {seed} in {time.perf_counter() - t1:.0f} s")

    with ThreadPoolExecutor(n_jobs) as pool:
        for _ in pool.map(_one, runs):
            pass
    return n_jobs


def run_study(out: str | Path, cfg: StudyConfig, *, quiet: bool = False, jobs: int = 0) -> dict[str, Any]:
    """Run (or continue) the study in ``out``; ``jobs`` trainings side by side (0: 2 on a CPU, 1 on CUDA)."""
    from otplug.bench.eval import load_policy

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "study_config.json"
    mine = attrs.asdict(cfg)
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in mine.items()}
    # the methods and the number of seeds are a selection, not a setting: a study may continue with more or fewer
    # of them (each run depends only on its method, its seed and the shared settings); anything else must match
    if cfg_path.is_file():
        theirs = json.loads(cfg_path.read_text())
        diff = sorted(k for k in set(mine) | set(theirs)
                      if k not in ("methods", "seeds") and mine.get(k) != theirs.get(k))
        if diff:
            raise StudyError(f"{out} holds a study with other settings ({', '.join(diff)}); use another --output-dir")
        done = list(dict.fromkeys([*theirs.get("methods", []), *mine["methods"]]))
        seeds = max(int(theirs.get("seeds", 0)), mine["seeds"])
        _write_json_atomic(cfg_path, {**mine, "methods": done, "seeds": seeds})
    else:
        _write_json_atomic(cfg_path, mine)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t0 = time.perf_counter()
    paths = ensure_data(out, cfg)
    say(f"data: {paths['real']} (real, region A), {paths['sim']} (sim, A+B)")
    # 1. every training, `jobs` side by side (children; one thread each on a CPU)
    runs = []
    for method in cfg.methods:
        ot_cfg = ot_config_for(method)
        ot_path = out / "configs" / f"{method}.json"
        if ot_cfg is not None:
            # a method's runs are kept by name: a folder whose runs used another OT config for it (an older
            # otplug's recommended config) must not be continued, or old and new runs would be pooled
            if ot_path.is_file() and json.loads(ot_path.read_text()) != ot_cfg:
                raise StudyError(f"{out}: method {method!r} was run here with another OT config ({ot_path}, an "
                                 f"older otplug's?); remove {out / 'runs' / method} and {out / 'evals' / method} to "
                                 "rerun it with the current one, or use another --output-dir")
            ot_path.parent.mkdir(exist_ok=True)
            _write_json_atomic(ot_path, ot_cfg)
        for seed in range(cfg.seeds):
            args = policy_args(cfg) + method_args(method, paths, cfg, ot_path) + [f"--seed={seed}"]
            runs.append((method, seed, out / "runs" / method / f"seed{seed}", args))
    n_jobs = _train_all(runs, jobs, say)
    # 2. closed-loop evaluation of every policy (this process, all cores)
    rows: list[dict[str, Any]] = []
    for method, seed, run_dir, _args in runs:
        t1 = time.perf_counter()
        ckpt = run_dir / "checkpoints" / "last" / "pretrained_model"
        loaded = load_policy(ckpt, "auto")
        for domain in cfg.eval_domains:
            for region in cfg.eval_regions:
                r = _evaluate(ckpt, domain, region, cfg, out / "evals" / method / f"seed{seed}" /
                              f"{domain}_{region}.json", loaded)
                rows.append({"method": method, "seed": seed, **r})
                say(f"{method:20s} seed {seed} {domain}/{region}: {r['successes']}/{r['episodes']}")
        if seed == 0:
            embedding_picture(ckpt, paths, out / "embeddings" / f"{method}.png", f"{method}: image features (PCA)\n"
                              "real frames and their DTW sim partners", loaded)
        say(f"evaluated {method} seed {seed} in {time.perf_counter() - t1:.0f} s")
    keys = ("method", "seed", "domain", "region", "episodes", "successes", "success_rate")
    table = [{k: r[k] for k in keys} for r in rows]
    _write_json_atomic(out / "study.json", table)
    cells = summarize_rows(rows)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    train_s = sum(json.loads((r[2] / "train_summary.json").read_text()).get("seconds", 0.0) for r in runs)
    eval_s = sum(r.get("seconds", 0.0) for r in rows)
    meta = {"minutes": (time.perf_counter() - t0) / 60, "device": "cuda" if _cuda() else "cpu",
            "peak_rss_gib": max(children, me), "train_minutes": train_s / 60, "eval_minutes": eval_s / 60,
            "jobs": n_jobs}
    _write_json_atomic(out / "study_summary.json", {"cells": cells, **meta})
    text = write_table(out, cells, cfg, meta)
    write_plot(out, cells, cfg)
    say(text)
    say(f"the study's page (tables, curves, embeddings, every run): otplug report {out}")
    return {"rows": table, "cells": cells, **meta}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otplug study", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True, help="study folder (created; an existing study continues)")
    p.add_argument("--demo", action="store_true",
                   help="cotrain vs cotrain-ot, 1 seed, 100 episodes (make demo, ~4 min)")
    p.add_argument("--quick", action="store_true", help="3 methods, 1 seed, 100 episodes (~7 min on a 2-core CPU)")
    p.add_argument("--seeds", type=int, help="training seeds per method (default 3; --quick 1)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all but the "
                   f"ablations {','.join(m for m in METHODS if m not in DEFAULT_METHODS)})")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--episodes", type=int, help="evaluation episodes per seed, domain and region")
    p.add_argument("--lambda-ot", type=float, help="weight of the OT loss in the OT methods (default 0.1)")
    p.add_argument("--eval-sim", action="store_true", help="also evaluate in the sim domain")
    p.add_argument("--jobs", type=int, default=0, help="trainings side by side (default: 2 on a CPU, 1 on CUDA)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    over: dict[str, Any] = {}
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise StudyError(f"--methods: unknown {bad or args.methods!r}; choose from {', '.join(METHODS)}")
        over["methods"] = methods
    for name, value in (("seeds", args.seeds), ("steps", args.steps), ("eval_episodes", args.episodes)):
        if value is not None:
            if value < 1:
                raise StudyError(f"--{name.replace('eval_', '')} must be >= 1, got {value}")
            over[name] = value
    if args.lambda_ot is not None:
        if not (args.lambda_ot > 0 and args.lambda_ot < float("inf")):
            raise StudyError(f"--lambda-ot must be a finite number > 0, got {args.lambda_ot}")
        over["lambda_ot"] = args.lambda_ot
    if args.eval_sim:
        over["eval_domains"] = ("real", "sim")
    if args.demo and args.quick:
        raise StudyError("--demo and --quick are two presets; choose one")
    cfg = StudyConfig.demo(**over) if args.demo else StudyConfig.quick(**over) if args.quick else StudyConfig(**over)
    result = run_study(args.output_dir, cfg, quiet=args.quiet, jobs=args.jobs)
    if args.demo:
        surface_demo_run(Path(args.output_dir).expanduser(), result)
    return 0


def surface_demo_run(out: Path, result: dict[str, Any]) -> None:
    """The demo folder's top level holds the OT run's ``metrics.jsonl`` and ``plans/`` (links into
    ``runs/cotrain-ot/seed0``) next to ``study.md``, so the main job's training record is where the README says."""
    run = out / "runs" / "cotrain-ot" / "seed0"
    for name in ("metrics.jsonl", "plans", "checkpoints"):
        link = out / name
        if link.is_symlink() or link.exists():
            if link.is_symlink():
                link.unlink()
            else:
                continue
        if (run / name).exists():
            link.symlink_to(Path("runs") / "cotrain-ot" / "seed0" / name)
