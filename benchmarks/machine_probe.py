"""What makes a study's numbers machine-dependent (issue #30): the CPU kernels, isolated on one machine.

    .venv/bin/python benchmarks/machine_probe.py --study STUDY_DIR [--method cotrain] [--seed 0] [--steps 5]
                                                 [--episodes 200] [--json out.json]

The same machine, the same data, the same command, and only torch's CPU kernel set changed between runs:
``ATEN_CPU_CAPABILITY`` (aten's vectorised kernels: avx512 / avx2 / default) and ``ONEDNN_MAX_CPU_ISA`` (oneDNN's
convolutions and matmuls), the knobs by which a machine with another instruction set computes. Two probes:

1. **training**: the study's training cell of ``--method`` / ``--seed`` (its exact arguments) for ``--steps`` steps
   under each kernel set, in a child process each; prints the BC loss of every step and whether it is bit-identical
   to the default's. A difference at step 1 means the kernels round differently; how it grows over the steps is how
   fast training amplifies it.
2. **evaluation**: the study's trained checkpoint of that cell, evaluated on the study's scenes under each kernel
   set (the weights fixed): the success counts per region, and the episodes whose outcome changed.

One thread per child (as the study's trainings). The numbers are this machine's; the point is whether the kernel set
alone changes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_SETS = {
    "default": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512-aten-only": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}

EVAL = """
import json, sys
import numpy as np
import torch
from otplug.bench.eval import evaluate, load_policy
torch.set_num_threads(1)
ckpt, first, episodes, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
loaded = load_policy(ckpt, "cpu")
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for region in ("A", "B"):
    r = evaluate(loaded.policy, domain="real", region=region, episodes=episodes, seed=first, batch=min(episodes, 100),
                 image_size=size, preprocessor=loaded.preprocessor, postprocessor=loaded.postprocessor, keep_frames=0)
    out[region] = [bool(x) for x in np.asarray(r.success).tolist()]
print(json.dumps(out))
"""


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    return {**env, **extra, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled"}


def train_probe(study: Path, method: str, seed: int, steps: int) -> dict[str, list[float]]:
    from otplug.bench.study import method_args, policy_args
    from otplug.bench.study_config import SETTING_DEFAULTS, StudyConfig

    saved = {**SETTING_DEFAULTS, **json.loads((study / "study_config.json").read_text())}
    keep = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in StudyConfig.__annotations__}
    cfg = StudyConfig(**{**keep, "steps": steps})
    data = study / "data"
    paths = {"real": data / "real_A", "sim": data / "sim_all", "pair_info": data / "pair_info.json",
             "frame_cache": data / "frame_cache"}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ot_config = study / "configs" / f"{method}.json"
        for name, extra in KERNEL_SETS.items():
            run = Path(tmp) / name
            args = [*policy_args(cfg, method), *method_args(method, paths, cfg, ot_config), f"--seed={seed}",
                    "--log_freq=1", "--save_checkpoint=false", "--ot.diag_every=0", f"--output_dir={run}"]
            proc = subprocess.run([sys.executable, "-m", "otplug", "train", *args], env=_env(extra),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"training under {name} failed: {proc.stderr[-2000:]}")
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            out[name] = [r["bc_loss"] for r in rows if r.get("step", 0) > 0 and "bc_loss" in r]
    return out


def eval_probe(study: Path, method: str, seed: int, episodes: int) -> dict[str, dict]:
    cfg = json.loads((study / "study_config.json").read_text())
    first = {"dev": 200_000, "test": 300_000}[cfg.get("split", "dev")]
    ckpt = study / "runs" / method / f"seed{seed}" / "checkpoints" / "last" / "pretrained_model"
    out = {}
    for name, extra in KERNEL_SETS.items():
        proc = subprocess.run([sys.executable, "-c", EVAL, str(ckpt), str(first), str(episodes),
                               str(cfg.get("image_size", 32))], env=_env(extra), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"evaluation under {name} failed: {proc.stderr[-2000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--method", default="cotrain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    result: dict = {}
    if not a.skip_train:
        tr = train_probe(a.study, a.method, a.seed, a.steps)
        result["train_bc_loss"] = tr
        print(f"training {a.method} seed {a.seed}, BC loss per step (one thread):")
        for name, losses in tr.items():
            same = [x == y for x, y in zip(losses, tr["default"], strict=False)]
            print(f"  {name:18s} " + " ".join(f"{x:.6f}" for x in losses)
                  + f"   bit-identical to default: {sum(same)}/{len(same)} steps")
    ev = eval_probe(a.study, a.method, a.seed, a.episodes)
    result["eval"] = ev
    print(f"evaluation of the trained {a.method} seed {a.seed} (fixed weights), real domain, {a.episodes} scenes:")
    for name, r in ev.items():
        changed = {g: sum(x != y for x, y in zip(r[g], ev["default"][g], strict=True)) for g in ("A", "B")}
        print(f"  {name:18s} ({r['capability']:7s}) real A {sum(r['A'])}/{len(r['A'])}, real B {sum(r['B'])}/"
              f"{len(r['B'])}; episodes whose outcome differs from default: A {changed['A']}, B {changed['B']}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
