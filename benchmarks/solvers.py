"""Side-by-side benchmark of the OT solvers against the earlier reference path (not a timed test).

Reference step (the earlier implementation): ``M = cdist(src, tgt)**2`` -> ``M.detach().cpu().numpy()`` ->
POT ``sinkhorn_knopp_unbalanced`` on float64 NumPy -> ``loss = (torch.from_numpy(pi) * M).sum()`` -> backward.
Our steps replace the middle with ``solver.solve(M.detach(), ...)``. Everything runs in this process on the
same data. Features are N(0, I/d) (so squared distances are O(2) for every d); "offset" shifts the target
features by a vector of norm 1 (a domain gap: every cost grows by ~1).

Per configuration it prints: reference iterations / converged / collapsed (all-zero plan), and for each
solver the time ratio to the reference (solve alone, whole step with cdist and backward), iterations, the
relative loss error against a float64 truth (``sinkhorn`` in float64, tol 1e-11, up to 100k iterations) and
the plan mass. Then the median ratios where both converge, the worst error, and warm-start savings on a
sequence of slightly perturbed costs (as in training).

    python benchmarks/solvers.py --quick            # small grid, a couple of minutes on 2 CPU cores
    python benchmarks/solvers.py --sizes 32,512,2048 --dims 64,4096 --threads 2 > bench.txt
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
import warnings

import numpy as np
import ot
import torch

from otplug.solvers.configs import PotConfig, SinkhornConfig
from otplug.solvers.pot_ref import PotTorchSolver
from otplug.solvers.sinkhorn import LogSinkhornSolver


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def features(B: int, d: int, offset: float, seed: int, device: str):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(B, d, generator=g) / d**0.5
    tgt = torch.randn(B, d, generator=g) / d**0.5
    if offset:
        shift = torch.randn(d, generator=g)
        tgt = tgt + offset * shift / shift.norm()
    return src.to(device).requires_grad_(True), tgt.to(device)


def reference_solve(M: torch.Tensor, reg: float, tau: tuple[float, float]):
    Mn = M.detach().cpu().numpy().astype(np.float64)
    n, m = Mn.shape
    pi, log = ot.unbalanced.sinkhorn_knopp_unbalanced(
        np.full(n, 1 / n), np.full(m, 1 / m), Mn, reg, reg_m=tau, reg_type="kl", log=True
    )
    return torch.from_numpy(pi).to(M), len(log["err"]), (log["err"][-1] if log["err"] else float("inf"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 32,256; dim 64,4096; fewer repeats")
    ap.add_argument("--sizes", default="32,128,512,2048")
    ap.add_argument("--dims", default="64,4096")
    ap.add_argument("--regs", default="0.1,0.01,0.001")
    ap.add_argument("--taus", default="0.01,1,10")
    ap.add_argument("--offsets", default="0,1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warm-steps", type=int, default=8)
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.repeat = "32,256", 2
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # POT warns on every collapse; the table reports them
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(s) for s in args.dims.split(",")]
    regs = [float(s) for s in args.regs.split(",")]
    taus = [float(s) for s in args.taus.split(",")]
    offsets = [float(s) for s in args.offsets.split(",")]
    dev = args.device
    print(f"# machine: {platform.processor() or platform.machine()}, torch threads {args.threads}, device {dev}, "
          f"torch {torch.__version__}, POT {ot.__version__}")
    solvers = {
        "sinkhorn": lambda: LogSinkhornSolver(SinkhornConfig(warm_start=False)),
        "pot-torch": lambda: PotTorchSolver(PotConfig()),
    }
    hdr = (f"{'B':>5} {'d':>5} {'off':>3} {'reg':>6} {'tau':>5} | {'ref_it':>6} {'conv':>4} {'coll':>4} {'ref_err':>8}"
           f" {'ref_mass':>8} | " + " | ".join(f"{k:>9}: {'solve':>6} {'step':>6} {'it':>5} {'err':>8} {'mass':>8}"
                                                 for k in solvers))
    print(hdr)
    ratios = {k: ([], []) for k in solvers}
    worst = {k: 0.0 for k in solvers}
    collapses = 0
    for B, d, off, reg, t in itertools.product(sizes, dims, offsets, regs, taus):
        tau = (t, t)
        src, tgt = features(B, d, off, seed=B + d, device=dev)
        M = (torch.cdist(src, tgt) ** 2).detach()
        tr = LogSinkhornSolver(SinkhornConfig(tol=1e-11, max_iter=100_000, dtype="float64", warm_start=False))
        T = tr.solve(M.double(), reg=reg, reg_m=tau)
        L_true = float((T.plan * M.double()).sum())

        def ref_step():
            Ms = torch.cdist(src, tgt) ** 2
            pi, _, _ = reference_solve(Ms, reg, tau)
            loss = (pi * Ms).sum()
            loss.backward()
            return loss

        t_ref_solve, (pi_ref, ref_it, ref_err) = timed(lambda: reference_solve(M, reg, tau), args.repeat)
        t_ref_step, _ = timed(ref_step, args.repeat)
        ref_mass = float(pi_ref.sum())
        collapsed = ref_mass == 0.0 or not np.isfinite(ref_err)
        collapses += collapsed
        ref_conv = (not collapsed) and ref_err < 1e-6
        e_ref = abs(float((pi_ref.double() * M.double()).sum()) - L_true) / max(abs(L_true), 1e-300)
        row = f"{B:>5} {d:>5} {off:>3g} {reg:>6g} {t:>5g} | {ref_it:>6} {int(ref_conv):>4} {int(collapsed):>4} {e_ref:>8.1e} {ref_mass:>8.2e} | "
        cells = []
        for name, make in solvers.items():
            s = make()
            t_solve, res = timed(lambda: s.solve(M, reg=reg, reg_m=tau), args.repeat)

            def our_step():
                Ms = torch.cdist(src, tgt) ** 2
                r = s.solve(Ms.detach(), reg=reg, reg_m=tau)
                loss = (r.plan.to(Ms.dtype) * Ms).sum()
                loss.backward()
                return loss

            t_step, _ = timed(our_step, args.repeat)
            err = abs(float((res.plan.double() * M.double()).sum()) - L_true) / max(abs(L_true), 1e-300)
            if name == "sinkhorn" or res.converged:
                worst[name] = max(worst[name], err)
            if ref_conv and res.converged:
                ratios[name][0].append(t_solve / t_ref_solve)
                ratios[name][1].append(t_step / t_ref_step)
            cells.append(f"{name:>9}: {t_solve / t_ref_solve:>6.2f} {t_step / t_ref_step:>6.2f} {res.iterations:>5}"
                         f"{'' if res.converged else '!'} {err:>8.1e} {float(res.plan.sum()):>8.2e}")
        print(row + " | ".join(cells), flush=True)
    print("\n# summary (ratios: ours / reference, median over configurations where both converge)")
    print(f"# reference collapsed (all-zero plan) on {collapses} configurations")
    for name, (rs, rt) in ratios.items():
        if rs:
            print(f"# {name}: median solve ratio {statistics.median(rs):.2f}, median step ratio "
                  f"{statistics.median(rt):.2f} over {len(rs)} configs; worst loss error vs truth {worst[name]:.1e}")

    # warm start: a training-like sequence of slightly perturbed costs
    print("\n# warm start: mean iterations over a sequence of perturbed costs (features + 1% noise per step)")
    for B, reg, t in itertools.product(sizes[:2], regs, (1.0,)):
        src, tgt = features(B, 64, 0.0, seed=7, device=dev)
        cold_s = LogSinkhornSolver(SinkhornConfig(warm_start=False))
        warm_s = LogSinkhornSolver(SinkhornConfig(warm_start=True))
        g = torch.Generator().manual_seed(1)
        ci, wi = [], []
        for step in range(args.warm_steps):
            s_ = src.detach() + 0.01 * torch.randn(src.shape, generator=g) / 64**0.5
            M = torch.cdist(s_, tgt) ** 2
            rc = cold_s.solve(M, reg=reg, reg_m=(t, t))
            rw = warm_s.solve(M, reg=reg, reg_m=(t, t))
            if step:
                ci.append(rc.iterations)
                wi.append(rw.iterations)
        cut = 1 - statistics.mean(wi) / statistics.mean(ci)
        print(f"# B={B} reg={reg:g} tau={t:g}: cold {statistics.mean(ci):.0f} it, warm {statistics.mean(wi):.0f} it "
              f"({100 * cut:.0f}% fewer)")


if __name__ == "__main__":
    main()
