"""``otplug study``: train and evaluate sim-to-real co-training methods on the reach benchmark, over training seeds,
on held-out scenes, with seed-level statistics (SPEC §8.1).

Data (recorded once per study folder, deterministic): ``real`` expert demonstrations in region A only (the real
robot's demos cover part of the start states), ``sim`` demonstrations over the whole space (A and B), their DTW
``pair_info.json`` (``otplug pair`` on ``observation.state``), and a few held-out real demos of region A (other
scenes; only for the offline signal "held-out real BC loss").

Methods (every one the same policy, steps, BC rows per step and training seeds; they differ only in data and loss):

=========================  ===========================================================================================
``target-only``            BC on the real demos only
``source-only``            BC on the sim demos only
``cotrain``                BC on real + sim rows (``--ot.bc_source_weight``) plus the DTW-paired rows the OT methods
                           get (``--ot.cotrain_only``): exactly their rows, no OT loss
``cotrain-mmd``            co-training + the paper's MMD baseline: the energy distance between the sim and real image
                           features (:data:`MMD_ENERGY`; geomloss's ``SamplesLoss("energy")``), no pairing used
``cotrain-mmd-linear``     co-training + a linear-kernel MMD (mean-embedding matching, :data:`MMD_LINEAR`)
``cotrain-ot``             co-training + the OT loss (the recommended config, :data:`RECOMMENDED_OT`: the image
                           features' scale held by ``scale_anchor``)
``cotrain-ot-plain``       the same without ``scale_anchor`` (:data:`PLAIN_OT`, the recommended config before it)
``cotrain-ot-noprior``     co-training + OT without the diagonal prior (``heuristic = false``)
``cotrain-ot-l2``          co-training + OT on unit-length image features (``embed_norm = "l2"``), no prior, no anchor
``cotrain-ot-pool``        co-training + OT that also sees the unlabelled real pool (:data:`POOL_OT`;
                           ``--ot.target_pool``: ``pool_rows`` pool frames and as many uniformly drawn sim frames join
                           the DTW pairs of each OT batch, never BC rows; the image term, the pairs under the diagonal
                           prior, the pool block under the product prior)
``cotrain-mmd-pool``       the MMD baseline with the same pool frames among its real features (:data:`MMD_ENERGY`)
``cotrain-ot-joint-pool``  ``cotrain-ot-pool`` + the ``joint`` term's label part (:data:`POOL_JOINT_OT`): sim actions
                           against the policy's predicted actions on the real frames
=========================  ===========================================================================================

The one-dataset methods (target-only, source-only) train on as many rows per step as the co-training methods
(``batch_size + 2 * ot_batch_size``). Splits (``--split``): ``dev`` evaluates on scenes 200000.. with training seeds
0.., ``test`` on scenes 300000.. with training seeds 1000..; every choice is made on dev, the final table is test,
run once. Every trained policy is evaluated in closed loop (:func:`otplug.bench.eval.evaluate`) on regions A and B
in the real domain and, in the full study, in the sim domain too, on the split's scenes (the same for every method
and seed). Outputs in ``--output-dir``: ``study.json`` (one row per method x seed x domain x region, with the split,
the scene seeds and how many episodes ended on the other region's side of the goal), ``study_summary.json``
(:mod:`otplug.bench.study_summary`: seed means with t intervals, paired differences against co-training, a
hierarchical bootstrap, sim - real gaps, the gap each alignment method closes, where the episodes end, which offline
signal predicts success), ``study.md``, ``study.png`` and ``embeddings/<method>.png``. A
killed study continues where it stopped: finished trainings and evaluations are kept (each written atomically),
an unfinished training restarts.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from otplug.atomic import save_text
from otplug.bench.study_config import (
    DEFAULT_METHODS,
    METHODS,
    MMD_ENERGY,
    MMD_LINEAR,
    PLAIN_OT,
    POOL_JOINT_OT,
    POOL_METHODS,
    POOL_OT,
    PRECISIONS,
    RECOMMENDED_OT,
    SETTING_DEFAULTS,
    SPLITS,
    StudyConfig,
    StudyError,
)
from otplug.bench.study_outputs import embedding_picture, write_plot, write_table
from otplug.bench.study_provenance import ROW_RECORD, check_data_hashes, environments, read_json, short_hash

__all__ = ["METHODS", "RECOMMENDED_OT", "STUDY_CLAIM", "StudyConfig", "StudyError", "main", "run_study"]

#: the claim file of a study folder (otplug.claims): one study per folder
STUDY_CLAIM = ".otplug-study.claim"

# ---------------------------------------------------------------------------------------------------------------------
# data

def _write_json_atomic(path: Path, data: Any) -> None:
    save_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def ensure_data(out: Path, cfg: StudyConfig, *, real_region: str = "A") -> dict[str, Path]:
    """Record the real (region A; ``real_region="all"``: both, a dev check of what coverage does, not the study's
    question) and sim (all) demos and their pair_info once; return their paths."""
    from otplug.bench.record import record_demos
    from otplug.lerobot.datasets import open_dataset
    from otplug.lerobot.dtw import compute_pair_info
    from otplug.lerobot.pair_info import save_pair_info

    data = out / "data"
    paths = {"real": data / f"real_{real_region}", "sim": data / "sim_all", "pair_info": data / "pair_info.json",
             "heldout": data / "real_A_heldout", "frame_cache": data / "frame_cache"}
    stamp = data / "complete.json"
    want = {"real_episodes": cfg.real_episodes, "sim_episodes": cfg.sim_episodes, "image_size": cfg.image_size,
            "data_seed": cfg.data_seed, "heldout_episodes": cfg.heldout_episodes, "task": "reach-and-hold",
            **({} if real_region == "A" else {"real_region": real_region})}
    if read_json(stamp) == want:
        return paths
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    record_demos(paths["real"], domain="real", region=real_region, n_episodes=cfg.real_episodes, seed=cfg.data_seed,
                 scene_seed=cfg.data_seed, image_size=cfg.image_size, repo_id=f"otplug/study_real_{real_region}")
    record_demos(paths["sim"], domain="sim", region="all", n_episodes=cfg.sim_episodes, seed=cfg.data_seed + 1,
                 scene_seed=cfg.data_seed + 1000, image_size=cfg.image_size, repo_id="otplug/study_sim_all")
    record_demos(paths["heldout"], domain="real", region="A", n_episodes=cfg.heldout_episodes, seed=cfg.data_seed + 2,
                 scene_seed=cfg.data_seed + 50_000, image_size=cfg.image_size, repo_id="otplug/study_real_A_heldout")
    real = open_dataset(f"otplug/study_real_{real_region}", paths["real"])
    sim = open_dataset("otplug/study_sim_all", paths["sim"])
    save_pair_info(compute_pair_info(sim, real, key="observation.state", normalize="none", top_k=5),
                   paths["pair_info"])
    _write_json_atomic(stamp, want)
    return paths


#: the pool's scenes: episode seeds drawn from this scene seed (offset from ``data_seed``), apart from the demos'
POOL_SCENE_OFFSET = 70_000


def ensure_pool(out: Path, cfg: StudyConfig, paths: dict[str, Path]) -> dict[str, Path]:
    """The unlabelled real pool of the ``*-pool`` methods, recorded once (its own stamp, so a study without them
    records nothing new): ``data/real_play`` (a goal-blind scripted motion over both regions, no actions) and the
    ``data/pool.toml`` that names it for ``--ot.target_pool``."""
    from otplug.bench.record import record_play

    data = out / "data"
    paths = {**paths, "pool": data / "real_play", "pool_file": data / "pool.toml"}
    stamp = data / "real_play.complete.json"
    want = {"pool_episodes": cfg.pool_episodes, "image_size": cfg.image_size, "data_seed": cfg.data_seed,
            "motion": "waypoints", "region": "all"}
    if read_json(stamp) == want and paths["pool_file"].is_file():
        return paths
    import shutil

    shutil.rmtree(paths["pool"], ignore_errors=True)
    record_play(paths["pool"], domain="real", region="all", n_episodes=cfg.pool_episodes, seed=cfg.data_seed + 3,
                scene_seed=cfg.data_seed + POOL_SCENE_OFFSET, image_size=cfg.image_size,
                repo_id="otplug/study_real_play")
    save_text(paths["pool_file"], '# the unlabelled real pool (otplug.bench.study.ensure_pool)\n[[pool]]\nname = '
              '"real_play"\nroot = "real_play"\npairing = "none"\n')
    _write_json_atomic(stamp, want)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# training

def policy_args(cfg: StudyConfig, method: str = "cotrain") -> list[str]:
    """The policy and schedule every method shares: a small ACT, no pretrained weights, and the same
    BC rows per step (:attr:`StudyConfig.rows_per_step`: the one-dataset methods get the co-training methods'
    mixture rows + paired rows from their one dataset)."""
    batch = cfg.rows_per_step if method in ("target-only", "source-only") else cfg.batch_size
    return [
        "--policy.type=act", "--policy.push_to_hub=false",
        "--policy.pretrained_backbone_weights=null", "--policy.dim_model=64", "--policy.n_heads=4",
        "--policy.dim_feedforward=128", "--policy.n_encoder_layers=2", "--policy.n_decoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.latent_dim=16", "--policy.chunk_size=8",
        "--policy.n_action_steps=8", "--policy.optimizer_lr=3e-4", "--policy.optimizer_lr_backbone=3e-4",
        f"--policy.use_vae={str(cfg.use_vae).lower()}",
        f"--batch_size={batch}", "--num_workers=0", f"--steps={cfg.steps}", f"--log_freq={max(cfg.steps // 20, 1)}",
        f"--save_freq={cfg.steps}", "--wandb.enable=false", "--dataset.video_backend=pyav",
        # the fast path (docs/training.md): rows decoded once, fused AdamW (the same update up to rounding)
        "--ot.frame_cache=memory", "--ot.optimizer_impl=fused",
        *(["--policy.use_amp=true", "--ot.memory_format=channels_last"] if cfg.precision == "bf16" else []),
    ]


def method_args(method: str, paths: dict[str, Path], cfg: StudyConfig, ot_config: Path) -> list[str]:
    real = ["--dataset.repo_id=otplug/study_real_A", f"--dataset.root={paths['real']}"]
    sim_as_target = ["--dataset.repo_id=otplug/study_sim_all", f"--dataset.root={paths['sim']}"]
    source = ["--ot.source_repo_id=otplug/study_sim_all", f"--ot.source_root={paths['sim']}"]
    mix = [f"--ot.bc_source_weight={cfg.bc_source_weight}"]
    # decode once per grid: the first run of each dataset decodes it, the other cells load the rows
    store = [f"--ot.frame_cache_dir={paths['frame_cache']}"]
    pool = []
    ot_rows = cfg.ot_batch_size
    if method in POOL_METHODS:
        # the OT batch gains pool_rows target rows from the pool; its DTW pairs (BC rows) stay co-training's
        ot_rows = cfg.ot_batch_size + cfg.pool_rows
        pool = [f"--ot.target_pool={paths['pool_file']}", f"--ot.pool_share={cfg.pool_rows / ot_rows!r}"]
    ot = [f"--ot.pair_info={paths['pair_info']}", f"--ot.lambda_ot={cfg.lambda_ot}", "--ot.layout=single-pass",
          f"--ot.batch_size={ot_rows}", "--ot.top_k=1", "--ot.sinks=[plan-heatmap]",
          f"--ot.plan_every={max(cfg.steps // 4, 1)}", *pool]
    if method == "target-only":
        return real + store + ["--ot.enabled=false"]
    if method == "source-only":
        return sim_as_target + store + ["--ot.enabled=false"]
    if method == "cotrain":
        # the same rows as the OT methods (mixture + DTW-paired sim/real rows), no OT loss: only the loss differs
        return real + source + mix + store + ot + ["--ot.cotrain_only=true", "--ot.sinks=[]"]
    if ot_config_for(method) is not None:
        return real + source + mix + store + ot + [f"--ot.config={ot_config}"]
    raise StudyError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")


def ot_config_for(method: str) -> dict[str, Any] | None:
    if method == "cotrain-mmd":
        return MMD_ENERGY
    if method == "cotrain-mmd-linear":
        return MMD_LINEAR
    if method == "cotrain-ot":
        return RECOMMENDED_OT
    if method == "cotrain-ot-plain":
        return PLAIN_OT
    if method == "cotrain-ot-noprior":
        return {**RECOMMENDED_OT, "heuristic": False}
    if method == "cotrain-ot-pool":
        return POOL_OT
    if method == "cotrain-mmd-pool":
        return MMD_ENERGY
    if method == "cotrain-ot-joint-pool":
        return POOL_JOINT_OT
    if method == "cotrain-ot-l2":  # unit-length image features (gradient through the norm), no prior, no anchor
        terms = [{**t, "embed_norm": "l2"} if t["type"] == "image" else t for t in PLAIN_OT["terms"]]
        return {**PLAIN_OT, "heuristic": False, "terms": terms}
    return None


# ---------------------------------------------------------------------------------------------------------------------
# evaluation and summary

def _evaluate(domain: str, region: str, cfg: StudyConfig, out: Path, loaded: Any) -> dict[str, Any]:
    """One cell of one policy on the split's scenes (kept in ``out``, written atomically; a cell kept from before
    ``ended_other_side`` was recorded has none, and its study.json row says None)."""
    from otplug.bench.eval import evaluate

    kept = read_json(out)
    if isinstance(kept, dict) and {"successes", "episodes"} <= set(kept):
        return kept
    first, stop = cfg.scene_seeds
    res = evaluate(loaded.policy, domain=domain, region=region, episodes=cfg.eval_episodes, seed=first,
                   batch=min(cfg.eval_episodes, 100), image_size=cfg.image_size, preprocessor=loaded.preprocessor,
                   postprocessor=loaded.postprocessor, keep_frames=0)
    row = {"domain": domain, "region": region, "episodes": res.episodes, "successes": res.successes,
           "success_rate": res.success_rate, "split": cfg.split, "scene_seeds": [first, stop],
           "ended_other_side": int(res.ended_other_side.sum()), "seconds": round(res.wall_s, 2)}
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out, row)
    return row


def _offline(loaded: Any, paths: dict[str, Path], run_dir: Path, out: Path, picture: Path | None,
             title: str) -> dict[str, Any]:
    """The run's offline signals (kept in ``out``) and, for the first seed of a method, its embedding picture."""
    from otplug.bench.study_offline import offline_signals, probe_features

    feats = None
    if picture is not None and not picture.is_file():
        feats = probe_features(loaded, paths)
        embedding_picture(feats, picture, title)
    kept = read_json(out)
    if isinstance(kept, dict):
        return kept
    signals = offline_signals(loaded, paths, run_dir, feats)
    _write_json_atomic(out, signals)
    return signals


# ---------------------------------------------------------------------------------------------------------------------
# the study

def _check_folder(out: Path, cfg: StudyConfig) -> None:
    """A study folder holds one set of settings (the split included); methods and seeds may grow."""
    cfg_path = out / "study_config.json"
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(cfg).items()}
    # the methods and the number of seeds are a selection, not a setting: a study may continue with more or fewer
    # of them (each run depends only on its method, its seed and the shared settings); anything else must match
    if cfg_path.is_file():
        saved = read_json(cfg_path)
        if not isinstance(saved, dict):
            raise StudyError(f"{cfg_path} is unreadable or not a JSON object (written over by something else?): it is "
                             "the record of this folder's settings; restore it, or use another --output-dir")
        theirs = {**SETTING_DEFAULTS, **saved}
        diff = sorted(k for k in set(mine) | set(theirs)
                      if k not in ("methods", "seeds") and mine.get(k) != theirs.get(k))
        if diff:
            raise StudyError(f"{out} holds a study with other settings ({', '.join(diff)}); use another --output-dir")
        done = list(dict.fromkeys([*theirs.get("methods", []), *mine["methods"]]))
        seeds = max(int(theirs.get("seeds", 0)), mine["seeds"])
        _write_json_atomic(cfg_path, {**mine, "methods": done, "seeds": seeds})
    else:
        _write_json_atomic(cfg_path, mine)


def _drop_broken_runs(out: Path, runs: list[tuple[str, int, Path, list[str]]], say: Any) -> None:
    """A finished run whose last checkpoint is no longer complete (files removed or cut by something else) is
    trained again, and its evaluations (of the old weights) are dropped: a rerun continues from what is intact."""
    import shutil

    from otplug.bench.launch import run_folder_holder
    from otplug.lerobot.train.run_dir import checkpoint_problem

    for method, seed, run_dir, _ in runs:
        if not (run_dir / "train_summary.json").is_file():
            continue
        why = checkpoint_problem(run_dir / "checkpoints" / "last")
        if why is None or run_folder_holder(run_dir) is not None:
            continue
        say(f"{method}/seed{seed}: its checkpoint is incomplete ({why}); training it again")
        (run_dir / "train_summary.json").unlink(missing_ok=True)
        shutil.rmtree(out / "evals" / method / f"seed{seed}", ignore_errors=True)


def _method_config(out: Path, method: str) -> Path:
    ot_cfg = ot_config_for(method)
    ot_path = out / "configs" / f"{method}.json"
    if ot_cfg is not None:
        # a method's runs are kept by name: a folder whose runs used another OT config for it (an older
        # otplug's recommended config) must not be continued, or old and new runs would be pooled
        if ot_path.is_file() and read_json(ot_path) not in (None, ot_cfg):
            raise StudyError(f"{out}: method {method!r} was run here with another OT config ({ot_path}, an "
                             f"older otplug's?); remove {out / 'runs' / method} and {out / 'evals' / method} to "
                             "rerun it with the current one, or use another --output-dir")
        ot_path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(ot_path, ot_cfg)
    return ot_path


def run_study(out: str | Path, cfg: StudyConfig, *, quiet: bool = False, launch: Any = None) -> dict[str, Any]:
    """Run (or continue) the study in ``out``. The trainings go through ``launch``
    (:class:`otplug.bench.launch.LaunchConfig`; default: on this machine, 2 side by side on a CPU, 1 with CUDA).
    A failed training is reported with its log and the rest go on; the study's files then cover the finished runs
    and :class:`StudyError` names the failed ones."""
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"cannot create the study folder {out}: {exc.strerror or exc}") from None
    with _claimed(out):
        return _run_study(out, cfg, quiet=quiet, launch=launch)


def _claimed(out: Path) -> Any:
    """One study per folder: a claim held for the whole invocation (data set-up, trainings, evaluation, files)."""
    from otplug.claims import Claim

    return Claim(out / STUDY_CLAIM, f"study folder {out}", hint="two studies must not share a folder; wait for it to "
                 "finish, stop it, or use another --output-dir")


def _run_study(out: Path, cfg: StudyConfig, *, quiet: bool, launch: Any) -> dict[str, Any]:
    from otplug.bench.eval import load_policy
    from otplug.bench.launch import Cell, LaunchConfig, cuda_available, run_cells, split_cores
    from otplug.bench.study_summary import summarize

    _check_folder(out, cfg)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t0 = time.perf_counter()
    paths = ensure_data(out, cfg)
    if any(m in POOL_METHODS for m in cfg.methods):
        paths = ensure_pool(out, cfg, paths)
    hashes = check_data_hashes(out, paths)
    data_hash = short_hash(hashes)
    first, stop = cfg.scene_seeds
    say(f"data: {paths['real']} (real, region A), {paths['sim']} (sim, A+B); split {cfg.split}: scenes "
        f"{first}..{stop - 1}, training seeds {', '.join(map(str, cfg.training_seeds))}")
    # 1. every training: one cell per (method, seed), through the launcher (local children or submitit jobs)
    launch = launch if launch is not None else LaunchConfig()
    n_jobs, threads = split_cores(launch.jobs)
    runs, cells = [], []
    for method in cfg.methods:
        ot_path = _method_config(out, method)
        for seed in cfg.training_seeds:
            args = policy_args(cfg, method) + method_args(method, paths, cfg, ot_path) + [f"--seed={seed}"]
            run_dir = out / "runs" / method / f"seed{seed}"
            runs.append((method, seed, run_dir, args))
            cells.append(Cell(name=f"{method}/seed{seed}", run_dir=run_dir, argv=args,
                              log=run_dir.parent / f"seed{seed}.log", threads=threads))
    _drop_broken_runs(out, runs, say)
    outcomes = run_cells(cells, launch, say=say)
    failed = [o for o in outcomes if not o.ok]
    runs = [r for r, o in zip(runs, outcomes, strict=True) if o.ok]
    # 2. closed-loop evaluation of every policy (this process, all cores), then its offline signals
    rows: list[dict[str, Any]] = []
    offline: dict[tuple[str, int], dict[str, Any]] = {}
    for method, seed, run_dir, _args in runs:
        t1 = time.perf_counter()
        ckpt = run_dir / "checkpoints" / "last" / "pretrained_model"
        loaded = load_policy(ckpt, "auto")
        evals = out / "evals" / method / f"seed{seed}"
        env_key = (read_json(run_dir / "run_info.json") or {}).get("environment_key")
        for domain in cfg.eval_domains:
            for region in cfg.eval_regions:
                r = _evaluate(domain, region, cfg, evals / f"{domain}_{region}.json", loaded)
                rows.append({"method": method, "seed": seed, **r, "steps": cfg.steps, "data_hash": data_hash,
                             "environment_key": env_key})
                say(f"{method:20s} seed {seed} {domain}/{region}: {r['successes']}/{r['episodes']}")
        picture = out / "embeddings" / f"{method}.png" if seed == cfg.training_seeds[0] else None
        offline[(method, seed)] = _offline(loaded, paths, run_dir, evals / "offline.json", picture,
                                           f"{method}: image features (PCA)\nreal frames and their DTW sim partners")
        say(f"evaluated {method} seed {seed} in {time.perf_counter() - t1:.0f} s")
    keys = ("method", "seed", "domain", "region", "episodes", "successes", "success_rate", "split", "scene_seeds")
    table = [{**{k: r[k] for k in keys}, **{k: r.get(k) for k in ROW_RECORD}} for r in rows]
    _write_json_atomic(out / "study.json", table)
    summary = summarize(rows, offline, methods=cfg.methods, domains=cfg.eval_domains, regions=cfg.eval_regions)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    train_s = sum((read_json(r[2] / "train_summary.json") or {}).get("seconds", 0.0) for r in runs)
    eval_s = sum(r.get("seconds", 0.0) for r in rows)
    meta = {"minutes": (time.perf_counter() - t0) / 60, "device": "cuda" if cuda_available() else "cpu",
            "peak_rss_gib": max(children, me), "train_minutes": train_s / 60, "eval_minutes": eval_s / 60,
            "jobs": n_jobs if launch.launcher == "local" else None, "launcher": launch.launcher, "split": cfg.split,
            "scene_seeds": [first, stop],
            "training_seeds": list(cfg.training_seeds), "precision": cfg.precision, "data_hashes": hashes,
            "data_hash": data_hash, **environments(rows, out)}
    _write_json_atomic(out / "study_summary.json", {**summary, **meta,
                                                    "offline": [{"method": m, "seed": sd, **v}
                                                                for (m, sd), v in offline.items()]})
    text = write_table(out, summary, cfg, meta)
    write_plot(out, summary["cells"], cfg)
    say(text)
    say(f"the study's page (tables, curves, embeddings, every run): otplug report {out}")
    if failed:
        def _one(o: Any) -> str:
            named = str(o.log) in (o.error or "")
            return f"{o.cell.name} ({o.error})" if named else f"{o.cell.name} ({o.error}; log: {o.log})"

        listed = "; ".join(_one(o) for o in failed[:3]) + (f"; and {len(failed) - 3} more (above)" if len(failed) > 3
                                                           else "")
        raise StudyError(f"{len(failed)} of {len(outcomes)} trainings failed, the study's files cover the other "
                         f"{len(outcomes) - len(failed)}: {listed}; rerun the same command to retry them")
    return {"rows": table, **summary, **meta}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otplug study", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True, help="study folder (created; an existing study continues)")
    p.add_argument("--demo", action="store_true",
                   help="cotrain vs cotrain-ot, 1 seed, 100 episodes, real domain (make demo; one seed is no evidence)")
    p.add_argument("--quick", action="store_true",
                   help="target-only, cotrain, cotrain-ot, 1 seed, 100 episodes, real domain")
    p.add_argument("--split", choices=SPLITS, default="dev",
                   help="evaluation scenes and training seeds: dev (every choice is made here; default) or test (the "
                        "final table, run once)")
    p.add_argument("--seeds", type=int, help="training seeds per method (default 10; --quick and --demo 1)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all but the "
                   f"ablations {','.join(m for m in METHODS if m not in DEFAULT_METHODS)})")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--episodes", type=int, help="evaluation episodes per seed, domain and region")
    p.add_argument("--lambda-ot", type=float, help="weight of the OT loss in the OT methods (default 0.1)")
    p.add_argument("--eval-sim", action="store_true", help="also evaluate in the sim domain (--demo, --quick; the "
                   "full study always does)")
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="training precision: auto (default: bf16 where the training device computes bf16 natively, "
                        "else fp32; chosen on dev, docs/training.md), bf16 (bf16 autocast + channels_last; the OT plan "
                        "stays float32) or fp32")
    p.add_argument("-q", "--quiet", action="store_true")
    from otplug.bench.launch import add_launch_arguments

    add_launch_arguments(p)
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
    over["split"] = args.split
    over["precision"] = resolve_precision(args.precision)
    if args.demo and args.quick:
        raise StudyError("--demo and --quick are two presets; choose one")
    cfg = StudyConfig.demo(**over) if args.demo else StudyConfig.quick(**over) if args.quick else StudyConfig(**over)
    from otplug.bench.launch import launch_config_from_args

    launch = launch_config_from_args(args, args.output_dir)
    try:
        result = run_study(args.output_dir, cfg, quiet=args.quiet, launch=launch)
    except OSError as exc:  # a file of the study removed, made unreadable or unwritable by something else meanwhile
        from otplug.atomic import disk_full, write_error

        if disk_full(exc):
            raise write_error(getattr(exc, "filename", None), exc) from None
        where = exc.filename or "a file of the study"
        raise StudyError(f"{where}: {exc.strerror or exc} (changed by something else while the study ran?); fix it "
                         "and run the same command again: finished trainings and evaluations are kept") from None
    if args.demo:
        surface_demo_run(Path(args.output_dir).expanduser(), result)
    return 0


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 where this machine's training device computes bf16 natively (the CUDA GPU, else the CPU)."""
    if precision != "auto":
        return precision
    from otplug.bench.launch import cuda_available
    from otplug.environment import bf16_support

    return "bf16" if bf16_support("cuda" if cuda_available() else "cpu") else "fp32"


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
