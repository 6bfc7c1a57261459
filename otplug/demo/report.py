"""The demo's report: how well the trained policies' image embeddings of DTW-paired sim/real frames line up,
and ``summary.md`` / ``summary.json``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from lerobot.datasets.factory import make_dataset
from lerobot.policies import make_policy, make_pre_post_processors
from lerobot.policies.factory import get_policy_class
from lerobot.utils.random_utils import set_seed

from otplug.atomic import save_text
from otplug.lerobot.pair_dataset import make_source_dataset, partner_pairs
from otplug.lerobot.train.batches import images_to_float
from otplug.policy_encoder import resolve_encoder
from otplug.recipes import CAMERA_KEY
from otplug.stats import partner_rank, retrieval_at_1

__all__ = ["embedding_alignment", "summarize"]


def _load(policy_dir: Path | None, cfg, dataset):
    """(policy, preprocessor) from a checkpoint folder, or the policy at init (same seed) when None."""
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
    """How well the policy's image embeddings of DTW-paired sim/real frames line up (all scale free but ``scale``).

    ``pairs``: (src_batch, tgt_batch) collated lerobot batches, row i of each being a DTW pair. With
    ``D_ij = |e(sim_i) - e(real_j)|^2`` (eval mode, no gradient):

    * ``retrieval``: fraction of real frames whose nearest sim embedding (among the n sim frames) is their own
      partner (chance: 1/n), :func:`otplug.stats.retrieval_at_1`;
    * ``rank``: mean rank of the partner among the n sim frames (0 = nearest; chance: (n-1)/2),
      :func:`otplug.stats.partner_rank`; both with its tie rule (ties broken at random, in expectation);
    * ``ratio``: mean paired ``D_ii`` / mean unpaired ``D_ij`` (i != j); 1 = a real frame is no closer to its
      partner than to any other sim frame;
    * ``paired`` / ``unpaired``: those two means; ``scale``: mean squared norm of all the embeddings.
    """
    enc = resolve_encoder(policy)  # the encoder registry, as training does (otplug list-encoders)
    src, tgt = (preprocessor(images_to_float(dict(b), camera_keys)) for b in pairs)
    with torch.no_grad():
        es = enc.encode_feature_for_ot(CAMERA_KEY, src[CAMERA_KEY]).flatten(1).double()
        et = enc.encode_feature_for_ot(CAMERA_KEY, tgt[CAMERA_KEY]).flatten(1).double()
        d = torch.cdist(et, es) ** 2  # rows: real frames, columns: sim frames
    n = d.shape[0]
    diag = torch.diagonal(d)
    off = ~torch.eye(n, dtype=torch.bool)
    paired, unpaired = float(diag.mean()), float(d[off].mean())
    return {
        "retrieval": retrieval_at_1(es, et),
        "rank": partner_rank(es, et),
        "ratio": paired / unpaired if unpaired > 0 else float("nan"),
        "paired": paired,
        "unpaired": unpaired,
        "scale": float(torch.cat([es, et]).pow(2).sum(1).mean()),
    }


EVAL_PAIRS = 64


def _eval_pairs(cfg, n: int = EVAL_PAIRS):
    """n real frames spread evenly over the real dataset, each with its DTW partner: the frame aligned to it in
    the lowest-distance sim episode (``top_k=1``, no jitter). No image augmentation."""
    c = copy.deepcopy(cfg)
    c.dataset.image_transforms.enable = False
    target = make_dataset(c)
    spec = cfg.ot.sources[0]
    source = make_source_dataset(spec.repo_id, spec.root, like=target, rename_map=spec.rename_map)
    _ds, _idx, pairs = partner_pairs(target, source, spec.pair_info, n, seed=12345)
    return pairs, target


def _rows(path: Path) -> list[dict]:
    """The training rows of a metrics.jsonl (without the step-0 row of the alignment diagnostics)."""
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("step", 1) > 0]


def summarize(out: Path, data, cfg, ot_summary: dict, base_summary: dict | None,
              demo_config: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the demo's policies (init, baseline, OT) and write ``summary.json`` / ``summary.md``."""
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
        "baseline_first_bc_loss": brows[0].get("bc_loss") if brows else None,
        "baseline_last_bc_loss": brows[-1].get("bc_loss") if brows else None,
        "eval_pairs": len(pairs[1]["action"]),
        "embedding_alignment": results,
        "embedding_alignment_note": (
            f"{len(pairs[1]['action'])} real frames spread evenly over the real dataset (training frames: the demo "
            "has no held-out split), each with its DTW partner (the aligned frame of the closest sim episode). "
            "Embedding = the ACT image embedding the OT term uses (ResNet18 + input projection, eval mode). "
            "retrieval: share of real frames whose nearest sim embedding among the candidates is their partner; "
            "rank: mean number of sim frames closer than the partner (both: a tie with k other frames counts "
            "1/(k+1) of a retrieval and k/2 ranks, as if broken at random); ratio: mean paired / mean unpaired squared "
            "distance; scale: mean squared embedding norm. All but scale are scale free."),
        "ot_config": (dict(demo_config) if Path(str(cfg.ot.config)) == Path(data.sim_root).parent / "demo_ot.json"
                      else {"path": str(cfg.ot.config)}),
        "seed": cfg.seed,
        "lambda_ot": cfg.ot.lambda_ot,
        "ot_batch_size": cfg.ot.batch_size,
        "batch_size": cfg.batch_size,
        "plans": plans,
        "datasets": {"sim": str(data.sim_root), "real": str(data.real_root), "pair_info": str(data.pair_info_path)},
    }
    summary["text"] = _text(summary, out)
    save_text(out / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "text"}, indent=2),
              "the demo summary")
    save_text(out / "summary.md", summary["text"] + "\n", "the demo summary")
    return summary


def _f(x: Any) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _describe_ot(s: dict) -> str:
    c = s["ot_config"]
    if "terms" not in c:
        return f"OT config: {c.get('path')} (given by the user); lambda_ot {s['lambda_ot']}."
    terms = " + ".join(f"{t['type']} {t.get('src_key', t['name'])} (weight {t.get('weight', 1.0)})" for t in c["terms"])
    return (f"OT config: {terms}; reg {c.get('reg')}, tau {c.get('tau_src')}/{c.get('tau_tgt')}, "
            f"heuristic {str(c.get('heuristic', False)).lower()}, "
            f"cost_normalization {c.get('cost_normalization', 'none')}; "
            f"lambda_ot {s['lambda_ot']}.")


def _text(s: dict, out: Path) -> str:
    f, l = s["first_logged"], s["last_logged"]
    al = s["embedding_alignment"]
    n = s["eval_pairs"]
    base = s["seconds_baseline_run"] is not None
    lines = [
        "# otplug demo: does the OT loss align sim and real image features?",
        "",
        f"Trained: a small ACT policy (no pretrained weights, CPU, seed {s['seed']}, {s['steps']} steps) on the "
        "reach benchmark's sim/real pair (otplug.bench: expert episodes, episode i from the same scene on both "
        f"sides). Every step's batch is {s['batch_size']} real rows + {s['ot_batch_size']} "
        "DTW-paired (sim, real) rows, all in the BC loss. "
        f"'with OT' adds lambda_ot x the OT loss between the paired sim and real rows ({s['seconds_ot_run']} s)"
        + (f"; 'baseline (no OT)' trains on exactly the same rows, seed and steps without it "
           f"({s['seconds_baseline_run']} s)." if base else "; no baseline was trained (--no-baseline)."),
        _describe_ot(s),
        "",
        f"Measured: for {n} real frames and their DTW sim partners, is the partner's image embedding the nearest "
        f"one? (retrieval among {n} sim frames: higher = better aligned, chance {1 / n:.3f}; partner rank: lower = "
        f"better, chance {(n - 1) / 2:.1f}; paired/unpaired distance ratio: lower = better, 1 = no alignment.)",
        "",
        "| policy | partner retrieval | mean partner rank | distance ratio | embedding scale |",
        "|---|---|---|---|---|",
    ]
    for name, r in al.items():
        lines.append(f"| {name} | {r['retrieval']:.2f} | {r['rank']:.1f} | {r['ratio']:.3f} | {_f(r['scale'])} |")
    ref = al.get("baseline (no OT)") or al.get("init")
    ot = al.get("with OT")
    if ref and ot and ot["scale"] < 0.1 * ref["scale"]:
        lines += ["", f"Note: with OT the image embeddings shrank (scale {_f(ot['scale'])} vs {_f(ref['scale'])}). "
                  "Shrinking every feature lowers the OT loss too, and ACT's normalised transformer barely "
                  "notices the scale, so read the scale-free columns, not raw distances."]
    lines += [
        "",
        "Training (averaged over the log window):",
        "",
        "| | first logged (step %s) | last logged (step %s) |" % (_f(f.get("step")), _f(l.get("step"))),
        "|---|---|---|",
        f"| BC loss, with OT | {_f(f.get('bc_loss'))} | {_f(l.get('bc_loss'))} |",
    ]
    if base:
        lines.append(f"| BC loss, baseline | {_f(s['baseline_first_bc_loss'])} | {_f(s['baseline_last_bc_loss'])} |")
    lines += [
        f"| OT loss (sum pi*M) | {_f(f.get('ot_loss'))} | {_f(l.get('ot_loss'))} |",
        f"| plan mass (pi_sum) | {_f(f.get('ot_pi_sum'))} | {_f(l.get('ot_pi_sum'))} |",
        f"| plan mass on the DTW pairs (pi_diag) | {_f(f.get('ot_pi_diag'))} | {_f(l.get('ot_pi_diag'))} |",
        "",
        s["embedding_alignment_note"],
        "",
        f"Files: {out}/metrics.jsonl, {out}/plans/ ({len(s['plans'])} pictures), {out}/checkpoints/last/"
        "pretrained_model (loads in lerobot-eval), summary.json.",
    ]
    return "\n".join(lines)
