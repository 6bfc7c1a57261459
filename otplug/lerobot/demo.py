"""``otplug train --demo``: the embedded default, end to end on CPU, offline.

1. :func:`~otplug.lerobot.demo_data.ensure_demo_datasets` generates (once, cached) a synthetic sim/real pair of
   LeRobot datasets and their DTW ``pair_info.json``.
2. A small ACT policy (no pretrained weights) is trained on the real dataset with the OT loss against the sim
   dataset (single-pass layout; an image-embedding term and an action label term, :data:`DEMO_OT_CONFIG`).
3. A baseline with the same data, rows, seed and steps but **no OT loss** (``--ot.cotrain_only``: the pairs are
   BC rows only) is trained into ``<output>/baseline`` unless ``--no-baseline``.
4. ``summary.json`` / ``summary.md``: BC and OT losses first vs last, plan mass, and the distance between the
   image embeddings of DTW-paired sim/real frames for the policy at init, the baseline and the OT policy.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otplug.errors import OtplugError

__all__ = ["DEMO_OT_CONFIG", "demo_args", "embedding_alignment", "run_demo"]

CAMERA = "observation.images.front"
MARKER = ".otplug-demo"
DEFAULT_STEPS = 150

#: The demo's OT config (native format). Written next to the cached datasets as ``demo_ot.json``.
DEMO_OT_CONFIG: dict[str, Any] = {
    "reg": 0.05,
    "tau_src": 1.0,
    "tau_tgt": 1.0,
    "cost_normalization": "mean",
    "terms": [
        {"type": "image", "name": "img_front", "src_key": CAMERA, "weight": 1.0},
        {"type": "action-slice", "name": "action", "weight": 0.5},
    ],
}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        "--ot.layout=single-pass", "--ot.batch_size=8", f"--ot.plan_every={max(steps // 5, 1)}",
        "--ot.sinks=[plan-heatmap]",
    ]


def _prepare_output(output_dir: Path, resume: bool) -> None:
    if resume or not output_dir.exists():
        return
    if (output_dir / MARKER).exists():
        if _rank() == 0:
            shutil.rmtree(output_dir)
        else:
            import time

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
    from otplug.lerobot.demo_data import ensure_demo_datasets
    from otplug.lerobot.train import parse_config, train

    out = Path(output_dir or "outputs/demo")
    n_steps = int(steps) if steps is not None else DEFAULT_STEPS
    data = ensure_demo_datasets()
    if data.pair_info_path is None or not Path(data.pair_info_path).is_file():
        raise OtplugError(f"demo pair_info missing at {data.pair_info_path}; rerun to regenerate the demo cache")
    ot_config = Path(data.sim_root).parent / "demo_ot.json"
    _write_atomic(ot_config, json.dumps(DEMO_OT_CONFIG, indent=2))
    _prepare_output(out, resume)
    user = [a for a in user_args if not a.startswith(("--output_dir", "--steps="))]

    base = demo_args(data, ot_config, out, n_steps)
    cfg = parse_config(base + user, resume=resume, output_dir=str(out))
    ot_summary = train(cfg)  # creates the folder (after every process has parsed its config)
    if _rank() == 0:
        (out / MARKER).write_text("made by otplug train --demo; a new demo run replaces this folder\n")
        _write_atomic(out / "ot_config.json", json.dumps(DEMO_OT_CONFIG, indent=2))

    base_summary = None
    if baseline:
        bdir = out / "baseline"
        if bdir.exists() and not (bdir / "checkpoints" / "last").exists() and _rank() == 0:
            shutil.rmtree(bdir)
        bres = resume and (bdir / "checkpoints" / "last").exists()
        bcfg = parse_config(demo_args(data, ot_config, bdir, n_steps) + user
                            + ["--ot.cotrain_only=true", "--ot.sinks=[]"],
                            resume=bres, output_dir=str(bdir))
        base_summary = train(bcfg)

    if _rank() == 0:
        summary = summarize(out, data, cfg, ot_summary, base_summary)
        print(summary["text"])
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# evaluation

def _load(policy_dir: Path | None, cfg, dataset):
    """(policy, preprocessor) from a checkpoint folder, or the policy at init (same seed) when None."""
    from lerobot.policies import make_policy, make_pre_post_processors
    from lerobot.policies.factory import get_policy_class
    from lerobot.utils.random_utils import set_seed

    if policy_dir is None:
        set_seed(cfg.seed)
        policy = make_policy(cfg=cfg.policy, ds_meta=dataset.meta)
        pre = None  # the caller compares the init policy through the OT run's preprocessor
    else:
        policy = get_policy_class(cfg.policy.type).from_pretrained(str(policy_dir))
        pre, _ = make_pre_post_processors(policy_cfg=policy.config, pretrained_path=str(policy_dir))
    policy.eval()
    return policy, pre


def embedding_alignment(policy, preprocessor, pairs, camera_keys) -> dict[str, float]:
    """Mean squared distance of paired sim/real image embeddings, and its ratio to unpaired distances.

    ``pairs``: (src_batch, tgt_batch) collated lerobot batches. The ratio (paired / all cross pairs) is scale
    free: 1 means a paired real frame is no closer to its sim partner than to any other sim frame.
    """
    import torch

    from otplug.lerobot.encoders import ACTEncoder, DiffusionEncoder
    from otplug.lerobot.train import images_to_float

    enc = {"act": ACTEncoder, "diffusion": DiffusionEncoder}[policy.config.type](policy)
    src, tgt = (preprocessor(images_to_float(dict(b), camera_keys)) for b in pairs)
    with torch.no_grad():
        es = enc.encode_feature_for_ot(CAMERA, src[CAMERA]).flatten(1)
        et = enc.encode_feature_for_ot(CAMERA, tgt[CAMERA]).flatten(1)
        d = torch.cdist(es, et) ** 2
    paired = float(torch.diagonal(d).mean())
    allpairs = float(d.mean())
    return {"paired": paired, "unpaired": allpairs, "ratio": paired / allpairs if allpairs > 0 else float("nan")}


def _eval_pairs(cfg, n: int = 64):
    import copy

    import torch

    from otplug.lerobot.pair_dataset import OTPairDataset, PairSampling, collate_pairs, make_source_dataset
    from lerobot.datasets.factory import make_dataset

    c = copy.deepcopy(cfg)
    c.dataset.image_transforms.enable = False
    target = make_dataset(c)
    source = make_source_dataset(cfg.ot.source_repo_id, cfg.ot.source_root, like=target)
    ds = OTPairDataset(target, source, cfg.ot.pair_info, PairSampling(window_size=0), seed=12345)
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long().tolist()
    return collate_pairs([ds[i] for i in idx]), target


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def summarize(out: Path, data, cfg, ot_summary: dict, base_summary: dict | None) -> dict[str, Any]:
    pairs, target = _eval_pairs(cfg)
    cams = list(target.meta.camera_keys)
    ot_pol, ot_pre = _load(out / "checkpoints" / "last" / "pretrained_model", cfg, target)
    results: dict[str, dict[str, float]] = {}
    init_pol, _ = _load(None, cfg, target)
    results["init"] = embedding_alignment(init_pol, ot_pre, pairs, cams)
    if base_summary is not None:
        b_pol, b_pre = _load(out / "baseline" / "checkpoints" / "last" / "pretrained_model", cfg, target)
        results["baseline (no OT)"] = embedding_alignment(b_pol, b_pre, pairs, cams)
    results["with OT"] = embedding_alignment(ot_pol, ot_pre, pairs, cams)

    rows = _rows(out / "metrics.jsonl")
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    brows = _rows(out / "baseline" / "metrics.jsonl")
    plans = sorted(p.name for p in (out / "plans").glob("*.png")) if (out / "plans").is_dir() else []
    summary = {
        "steps": ot_summary.get("steps"),
        "seconds_ot_run": round(ot_summary.get("seconds", 0.0), 1),
        "seconds_baseline_run": round(base_summary.get("seconds", 0.0), 1) if base_summary else None,
        "world_size": ot_summary.get("world_size", 1),
        "first_logged": {k: first.get(k) for k in ("step", "bc_loss", "ot_loss", "ot_pi_sum", "ot_pi_diag")},
        "last_logged": {k: last.get(k) for k in ("step", "bc_loss", "ot_loss", "ot_pi_sum", "ot_pi_diag")},
        "baseline_last_bc_loss": brows[-1].get("bc_loss") if brows else None,
        "embedding_alignment": results,
        "embedding_alignment_note": (
            "squared distance between image embeddings (ACT backbone + input projection) of DTW-paired sim/real "
            "frames, 64 pairs, eval mode; ratio = paired / mean over all sim-real combinations (lower = sim and "
            "real frames of the same moment are closer than unrelated frames). 'init' is the policy before "
            "training (same seed); 'baseline (no OT)' trained on exactly the same rows and steps without the OT "
            "loss."),
        "plans": plans,
        "datasets": {"sim": str(data.sim_root), "real": str(data.real_root), "pair_info": str(data.pair_info_path)},
    }
    summary["text"] = _text(summary, out)
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "text"}, indent=2))
    (out / "summary.md").write_text(summary["text"] + "\n")
    return summary


def _f(x: Any) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _text(s: dict, out: Path) -> str:
    f, l = s["first_logged"], s["last_logged"]
    lines = [
        f"# otplug demo: ACT on synthetic sim -> real, {s['steps']} steps "
        f"({s['seconds_ot_run']} s with OT" + (f", {s['seconds_baseline_run']} s baseline)" if s["seconds_baseline_run"]
                                               is not None else ")"),
        "",
        "| | first logged (step %s) | last logged (step %s) |" % (_f(f.get("step")), _f(l.get("step"))),
        "|---|---|---|",
        f"| BC loss | {_f(f.get('bc_loss'))} | {_f(l.get('bc_loss'))} |",
        f"| OT loss | {_f(f.get('ot_loss'))} | {_f(l.get('ot_loss'))} |",
        f"| plan mass (pi_sum) | {_f(f.get('ot_pi_sum'))} | {_f(l.get('ot_pi_sum'))} |",
        f"| plan mass on the DTW pairs (pi_diag) | {_f(f.get('ot_pi_diag'))} | {_f(l.get('ot_pi_diag'))} |",
        "",
        "Paired sim/real image embeddings (lower ratio = better aligned):",
        "",
        "| policy | paired sq. distance | unrelated sq. distance | ratio |",
        "|---|---|---|---|",
    ]
    for name, r in s["embedding_alignment"].items():
        lines.append(f"| {name} | {_f(r['paired'])} | {_f(r['unpaired'])} | {_f(r['ratio'])} |")
    if s["baseline_last_bc_loss"] is not None:
        lines += ["", f"Baseline (same rows, no OT) last BC loss: {_f(s['baseline_last_bc_loss'])}."]
    lines += [
        "",
        s["embedding_alignment_note"],
        "",
        f"Files: {out}/metrics.jsonl, {out}/plans/ ({len(s['plans'])} pictures), {out}/checkpoints/last/"
        "pretrained_model (loads in lerobot-eval), summary.json.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(sys.argv[1:]))
