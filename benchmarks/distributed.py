"""What the global OT scope costs as the world grows (CPU, gloo): gather + compose + solve per step.

    python benchmarks/distributed.py                 # worlds 1, 2, 4; per-rank batch 32; dims 256
    python benchmarks/distributed.py --batch 64 --dim 1024 --worlds 1 2

Launches one torchrun per world size and prints, per world: rank-scope step time, global-scope step time,
and the ratio. Processes > cores oversubscribe the CPU, so treat 4 ranks on 2 cores as an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import otplug
    from otplug.distributed import global_ot, world

    dist.init_process_group("gloo")
    rank, size = world()
    torch.manual_seed(rank)
    cfg = {"terms": [{"type": "embedding", "name": "e", "src_key": "obs"}], "reg": 0.05, "tau_src": 1.0,
           "tau_tgt": 1.0, "solver": args.solver}
    enc = torch.nn.Linear(args.dim, args.dim)
    enc.encode_feature_for_ot = lambda key, x: enc(x)
    src = {"obs": torch.randn(args.batch, args.dim)}
    tgt = {"obs": torch.randn(args.batch, args.dim) + 0.3}
    times = {}
    for scope in ("rank", "global"):
        ot = otplug.OTLoss(cfg)
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                dist.barrier()
                t0 = time.perf_counter()
            res = ot(src, tgt, encoder=enc) if scope == "rank" else global_ot(ot, src, tgt, encoder=enc)
            res.loss.backward()
        dist.barrier()
        times[scope] = (time.perf_counter() - t0) / args.steps
    if rank == 0:
        print("RESULT " + json.dumps({"world": size, **times}))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch", type=int, default=32, help="OT pairs per process")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--solver", default="sinkhorn")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for w in args.worlds:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(w), __file__,
               "--worker", "--batch", str(args.batch), "--dim", str(args.dim), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--solver", args.solver]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"world {w} failed")
        rows.append(json.loads(line[7:]))
    print(f"per-rank batch {args.batch}, dim {args.dim}, solver {args.solver}, CPU gloo, OMP_NUM_THREADS=1")
    print(f"{'world':>5} {'global n':>8} {'rank ms':>9} {'global ms':>10} {'global/rank':>11}")
    for r in rows:
        print(f"{r['world']:>5} {r['world'] * args.batch:>8} {1e3 * r['rank']:>9.2f} {1e3 * r['global']:>10.2f} "
              f"{r['global'] / r['rank']:>11.2f}")


if __name__ == "__main__":
    main()
