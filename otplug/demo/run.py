"""``otplug train --demo``: the embedded default, end to end on CPU, offline.

1. :func:`~otplug.demo.data.ensure_demo_datasets` records (once, cached) the reach benchmark's sim/real pair of
   LeRobot datasets (:mod:`otplug.bench`: 20 expert episodes per domain, episode ``i`` from the same scene in
   both) and their DTW ``pair_info.json``.
2. A small ACT policy (no pretrained weights) is trained on the real dataset with the OT loss against the sim
   dataset (single-pass layout; each real row is paired with a frame of its closest DTW sim episode,
   ``--ot.top_k=1``; an image-embedding term and an action label term with the diagonal prior,
   :data:`DEMO_OT_CONFIG`).
3. A baseline with the same data, rows, seed and steps but **no OT loss** (``--ot.cotrain_only``: the pairs are
   BC rows only) is trained into ``<output>/baseline`` unless ``--no-baseline``.
4. ``summary.json`` / ``summary.md``: what was trained, then how well the image embeddings of DTW-paired sim/real
   frames line up for the policy at init, the baseline and the OT policy (partner retrieval and rank, distance
   ratio: all scale free; and the embedding scale), then BC/OT losses and plan mass first vs last.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otplug.atomic import save_text
from otplug.errors import OtplugError
from otplug.demo.data import ensure_demo_datasets
from otplug.demo.report import summarize
from otplug.lerobot.train.cli import expand_short_flags, parse_config, run
from otplug.lerobot.train.run_dir import RunLock
from otplug.lerobot.train.setup import make_accelerator
from otplug.recipes import RECOMMENDED_OT

__all__ = ["DEMO_OT_CONFIG", "demo_args", "main", "run_demo"]

MARKER = ".otplug-demo"
DEFAULT_STEPS = 150

#: The demo's OT config (native format), the benchmark's recommended one (an image-embedding term and an action
#: term with the diagonal prior: each real row is coupled only with its own DTW partner, docs/math.md §4; without
#: it this demo's OT coupled frames of different scenes as readily as partners -- measured partner retrieval 0.16
#: vs 0.36 with it, baseline 0.06, on the demo's earlier data, generator version 3). Written next to the cached
#: datasets as ``demo_ot.json``.
DEMO_OT_CONFIG: dict[str, Any] = RECOMMENDED_OT


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def demo_args(data, ot_config: Path, output_dir: Path, steps: int) -> list[str]:
    """The lerobot-train style arguments of the demo (user arguments are appended after these and win)."""
    return [
        f"--dataset.repo_id={data.real_repo_id}", f"--dataset.root={data.real_root}", "--dataset.video_backend=pyav",
        "--policy.type=act", "--policy.device=cpu", "--policy.push_to_hub=false",
        "--policy.pretrained_backbone_weights=null", "--policy.dim_model=64", "--policy.n_heads=4",
        "--policy.dim_feedforward=128", "--policy.n_encoder_layers=2", "--policy.n_decoder_layers=1",
        "--policy.n_vae_encoder_layers=1", "--policy.latent_dim=16", "--policy.chunk_size=10",
        "--policy.n_action_steps=10", "--policy.optimizer_lr=3e-4", "--policy.optimizer_lr_backbone=1e-4",
        "--batch_size=8", "--num_workers=0", f"--steps={steps}", "--log_freq=1", f"--save_freq={max(steps // 2, 1)}",
        "--seed=1000", "--wandb.enable=false", f"--output_dir={output_dir}",
        f"--ot.source_repo_id={data.sim_repo_id}", f"--ot.source_root={data.sim_root}",
        f"--ot.pair_info={data.pair_info_path}", f"--ot.config={ot_config}", "--ot.lambda_ot=0.1",
        "--ot.layout=single-pass", "--ot.batch_size=8", "--ot.top_k=1", f"--ot.plan_every={max(steps // 5, 1)}",
        "--ot.sinks=[plan-heatmap]",
    ]


def _prepare_output(output_dir: Path, resume: bool) -> None:
    if resume or not output_dir.exists():
        return
    if _rank() == 0:
        RunLock(output_dir, fresh=False).acquire().release()  # refuses while another run uses the folder
    if (output_dir / MARKER).exists():
        if _rank() == 0:
            shutil.rmtree(output_dir)
        else:
            for _ in range(600):
                if not output_dir.exists():
                    break
                time.sleep(0.1)
        return
    raise OtplugError(f"output directory {output_dir} exists and is not a previous demo run; pick another "
                      "--output-dir or add --resume")


def run_demo(user_args: Sequence[str], *, resume: bool = False, output_dir: str | None = None,
             steps: str | int | None = None, baseline: bool = True) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(output_dir or "outputs/demo_alignment")
    n_steps = int(steps) if steps is not None else DEFAULT_STEPS
    data = ensure_demo_datasets()
    if data.pair_info_path is None or not Path(data.pair_info_path).is_file():
        raise OtplugError(f"demo pair_info missing at {data.pair_info_path}; rerun to regenerate the demo cache")
    ot_config = Path(data.sim_root).parent / "demo_ot.json"
    save_text(ot_config, json.dumps(DEMO_OT_CONFIG, indent=2), "the demo's OT config")
    _prepare_output(out, resume)
    user = [a for a in user_args if not a.startswith(("--output_dir", "--steps="))]

    base = demo_args(data, ot_config, out, n_steps)
    cfg = parse_config(base + user, resume=resume, output_dir=str(out))
    # one accelerator (one process group under torchrun) for both runs, ended after the summary
    accelerator = make_accelerator(cfg)
    ot_summary = run(cfg, accelerator, end_training=False)  # creates the folder (after every process parsed)
    if _rank() == 0:
        save_text(out / MARKER, "made by otplug train --demo; a new demo run replaces this folder\n")
        used = Path(cfg.ot.config).read_text() if cfg.ot.config else json.dumps(DEMO_OT_CONFIG, indent=2)
        # the config this run used (--ot.config may replace the demo's)
        save_text(out / "ot_config.json", used, "the demo's OT config")

    base_summary = None
    if baseline:
        bdir = out / "baseline"
        if bdir.exists() and not (bdir / "checkpoints" / "last").exists() and _rank() == 0:
            shutil.rmtree(bdir)
        accelerator.wait_for_everyone()  # no process parses the baseline config while the half-made folder goes
        bres = resume and (bdir / "checkpoints" / "last").exists()
        bcfg = parse_config(demo_args(data, ot_config, bdir, n_steps) + user
                            + ["--ot.cotrain_only=true", "--ot.sinks=[]"],
                            resume=bres, output_dir=str(bdir))
        base_summary = run(bcfg, accelerator, end_training=False)

    if _rank() == 0:
        summary = summarize(out, data, cfg, ot_summary, base_summary, DEMO_OT_CONFIG)
        print(summary["text"])
        print(f"\nthe run's page: otplug report {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``otplug train --demo [--steps N] [--output-dir DIR] [--resume] [--no-baseline] [lerobot/ot options]``."""
    args, opts = expand_short_flags(list(sys.argv[1:] if argv is None else argv))
    return run_demo(args, resume=opts["resume"], output_dir=opts.get("output_dir"), steps=opts.get("steps"),
                    baseline=not opts["no_baseline"])
