"""A dev-split sweep of the study's knobs (SPEC §8.1: every choice is made on dev scenes and tuning seeds).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev_sweep.py --out DIR --name NAME --method cotrain \
        --seeds 0 1 --steps 800 --set=--policy.use_vae=false --set=--policy.optimizer_lr=1e-3 [--episodes 100]

Trains ``method`` (the study's arguments for it, on the study's data recorded in ``DIR/data_<px>_<real>_<sim>``)
with the extra ``--set`` arguments (``--set=--flag=value``: argparse reads a bare ``--flag`` as an option), for each
tuning seed, through the study's launcher (2 side by side on a CPU), then evaluates each
policy on the dev scenes (episode seeds 200000..) in sim and real on regions A and B, and appends one JSON line per
(seed, domain, region) to ``DIR/sweep.jsonl`` with the variant's name and arguments. The test scenes are never used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--method", default="cotrain")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--set", action="append", default=[],
                   help="an extra otplug train argument, written --set=--flag=value (repeatable)")
    p.add_argument("--study", action="append", default=[], help="a StudyConfig field as KEY=VALUE (e.g. image_size=48)")
    p.add_argument("--real-region", choices=("A", "all"), default="A",
                   help="where the real demos are (the study: A only; 'all' is a check of what coverage does)")
    a = p.parse_args(argv)

    from otplug.bench.eval import evaluate, load_policy
    from otplug.bench.launch import Cell, LaunchConfig, run_cells, split_cores
    from otplug.bench.study import _method_config, ensure_data, method_args, policy_args
    from otplug.bench.study_config import StudyConfig

    over = {}
    for kv in a.study:
        k, v = kv.split("=", 1)
        over[k] = json.loads(v) if v[:1] in "0123456789-[{tf" and v not in ("test",) else v
    cfg = StudyConfig(steps=a.steps, split="dev", eval_episodes=a.episodes, **over)
    out = Path(a.out).expanduser()
    data_dir = out / (f"data_{cfg.image_size}_{cfg.real_episodes}_{cfg.sim_episodes}"
                      + ("" if a.real_region == "A" else f"_real{a.real_region}"))
    paths = ensure_data(data_dir, cfg, real_region=a.real_region)
    ot_path = _method_config(out / "variants" / a.name, a.method)
    _n, threads = split_cores(0)
    cells = []
    for seed in a.seeds:
        run_dir = out / "variants" / a.name / f"seed{seed}"
        args = policy_args(cfg, a.method) + method_args(a.method, paths, cfg, ot_path) + [f"--seed={seed}", *a.set]
        cells.append(Cell(name=f"{a.name}/seed{seed}", run_dir=run_dir, argv=args, log=run_dir.parent /
                          f"seed{seed}.log", threads=threads))
    t0 = time.perf_counter()
    outcomes = run_cells(cells, LaunchConfig(), say=print)
    first = cfg.scene_seeds[0]
    with (out / "sweep.jsonl").open("a") as fh:
        for o in outcomes:
            if not o.ok:
                print(f"FAILED {o.cell.name}: {o.error} (log {o.log})")
                continue
            loaded = load_policy(o.cell.run_dir / "checkpoints" / "last" / "pretrained_model", "auto")
            seed = int(o.cell.name.rsplit("seed", 1)[1])
            for domain in ("sim", "real"):
                for region in ("A", "B"):
                    res = evaluate(loaded.policy, domain=domain, region=region, episodes=cfg.eval_episodes, seed=first,
                                   batch=100, image_size=cfg.image_size, preprocessor=loaded.preprocessor,
                                   postprocessor=loaded.postprocessor, keep_frames=0)
                    row = {"name": a.name, "method": a.method, "seed": seed, "domain": domain, "region": region,
                           "successes": res.successes, "episodes": res.episodes, "steps": a.steps, "set": a.set,
                           "study": over, "train_s": (o.summary or {}).get("seconds"),
                           **({} if a.real_region == "A" else {"real_region": a.real_region})}
                    fh.write(json.dumps(row) + "\n")
                    print(f"{a.name} seed {seed} {domain}/{region}: {res.successes}/{res.episodes}")
    print(f"{a.name}: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
