"""Where the study's policies lose the goal: three probes of the reach task's only hidden variable (issue #23).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/goal_probe.py train --variant act [--steps 1000] [--json F]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/goal_probe.py readout RUN_DIR [RUN_DIR ...] [--untrained] [--json F]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/goal_probe.py ends RUN_DIR [RUN_DIR ...] [--json F]
    .venv/bin/python benchmarks/goal_probe.py pairs STUDY_DIR [--json F]

``train``: can this vision path learn where the goal is at all, within the study's budget?

The study's policies reach the goal in sim in only ~0.45-0.70 of episodes (docs/benchmark.md), and the goal is only
in the image. This probe asks whether the vision path is what limits them, by giving that path the best signal it
could ever get: the goal's position itself. It trains ``--variant``'s ResNet18 (the one lerobot's ACT builds, up to
``layer4``) + ACT's own 1x1 input projection (``dim_model`` 64, the study's) + a linear read-out of the goal
(x, y), with the study's optimiser (Adam, lr 3e-4), batch (32) and steps (1000), on sim frames of the embedded reach
task (agents anywhere between their start and the goal, pixel noise on; both regions), then measures on held-out
frames of each domain and region: the RMSE of the goal and the fraction of frames whose goal estimate lies within
the task's hold radius (0.1). Variants:

* ``act``: lerobot's ACT backbone exactly (``ACTPolicy(...).model.backbone``): torchvision's ResNet18 with
  ``FrozenBatchNorm2d``. Without pretrained weights (no downloads here) its frozen statistics are the identity, so
  this network has **no normalisation at all**;
* ``bn``: the same ResNet18 with trainable ``BatchNorm2d`` (torchvision's default);
* ``gn``: the same with ``GroupNorm`` (16 channels a group, what lerobot's Diffusion policy uses without
  pretrained weights).

Images are normalised with ImageNet's mean and std, as lerobot-train does for cameras. One process, one variant;
numbers vary by machine (the errors much less than the times).

``readout``: did a trained policy's encoder learn it? For each run folder (its ``checkpoints/last``), the policy's
own image features (its registered encoder, as the OT loss and the study's offline signals use them, after the
policy's own preprocessor) of held-out frames with known goals, and a ridge read-out of the goal fitted on them:
fitted on sim frames (both regions) and tested on sim A/B (does the encoder know where the goal is?) and on real
A/B (does what it knows in sim carry over to real frames: the alignment OT is meant to give?); and fitted on real
frames, tested on real (is the goal in the real features at all?). Each read-out twice: ridge (a linear code of the
goal) and the mean goal of the 10 nearest fitted frames (``--k``; nearby features, nearby goals). ``--untrained``
adds the first run's policy freshly initialised, the floor: a random ResNet's features already say roughly where a
bright square is.

``ends``: where do the policies take the agent? Each run's policy in closed loop (100 dev scenes per domain and
region, as the study rolls out), and where its episodes end: on the goal's side or on the other region's.

``pairs``: how far apart are the goals of the DTW partners the OT loss pulls together? The pairing
(``data/pair_info.json``) matches episodes on ``observation.state`` only, and the goal is only in the image. Each
episode's goal comes from the episode seeds its recording wrote; for each real episode and each of its ranked sim
partners, the distance between their goals, against every same-region sim episode.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch import nn

from otplug.bench.env import (
    AGENT_START_HALF,
    GOAL_X_RANGE,
    GOAL_Y_RANGE,
    _Renderer,
    get_domain,
    in_region_a,
)

HOLD_RADIUS = 0.1
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def frames(domain: str, region: str, n: int, seed: int, size: int, imagenet: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` frames (float (n, 3, H, W) in [0, 1], ImageNet-normalised when ``imagenet``) and their goals (n, 2):
    goals drawn as the task draws them, the agent anywhere on its way from its start to the goal."""
    rng = np.random.default_rng([seed, 7])
    gx = rng.uniform(*GOAL_X_RANGE, n)
    if region == "A":
        sign = -np.ones(n)
    elif region == "B":
        sign = np.ones(n)
    else:
        sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    goal = np.stack([sign * gx, rng.uniform(*GOAL_Y_RANGE, n)], 1).astype(np.float32)
    start = rng.uniform(-AGENT_START_HALF, AGENT_START_HALF, (n, 2))
    agent = (start + rng.random((n, 1)) * (goal - start)).astype(np.float32)
    render = _Renderer(get_domain(domain), size)
    rngs = [np.random.default_rng([seed, 8, i]) for i in range(n)]
    img = torch.from_numpy(render(agent, goal, rngs)).permute(0, 3, 1, 2).float() / 255.0
    return ((img - IMAGENET_MEAN) / IMAGENET_STD if imagenet else img), torch.from_numpy(goal)


CELLS = (("sim", "A"), ("sim", "B"), ("real", "A"), ("real", "B"))


def _score(pred: torch.Tensor, goal: torch.Tensor) -> dict[str, float]:
    err = torch.linalg.vector_norm(pred - goal, dim=1)
    wrong = torch.from_numpy(in_region_a(pred.numpy()) != in_region_a(goal.numpy()))  # read in the other region
    return {"rmse": round(float(err.pow(2).mean().sqrt()), 3),
            "within_hold_radius": round(float((err < HOLD_RADIUS).float().mean()), 3),
            "wrong_region": round(float(wrong.float().mean()), 3)}


def backbone(variant: str, dim_model: int) -> tuple[nn.Module, nn.Module]:
    """(backbone returning ``{"feature_map": ...}``, ACT's 1x1 input projection)."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    if variant == "act":
        from lerobot.configs.types import FeatureType, PolicyFeature
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy

        cfg = ACTConfig(
            input_features={"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,)),
                            "observation.images.front": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32))},
            output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
            device="cpu", pretrained_backbone_weights=None, dim_model=dim_model, n_heads=4, dim_feedforward=128,
            n_encoder_layers=2, n_decoder_layers=1, chunk_size=8, n_action_steps=8, use_vae=False)
        model = ACTPolicy(cfg).model
        return model.backbone, model.encoder_img_feat_input_proj
    norm = {"bn": None, "gn": lambda c: nn.GroupNorm(c // 16, c)}[variant]
    net = torchvision.models.resnet18(weights=None, **({} if norm is None else {"norm_layer": norm}))
    return IntermediateLayerGetter(net, return_layers={"layer4": "feature_map"}), nn.Conv2d(512, dim_model, 1)


class Probe(nn.Module):
    def __init__(self, variant: str, dim_model: int, size: int) -> None:
        super().__init__()
        self.backbone, self.proj = backbone(variant, dim_model)
        side = -(-size // 32)
        self.head = nn.Linear(dim_model * side * side, 2)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(self.backbone(img)["feature_map"]).flatten(1))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    x, y = frames("sim", "all", args.train_frames, 1000 + args.seed, args.image_size)
    model = Probe(args.variant, 64, args.image_size)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    curve = []
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(x), (args.batch,), generator=gen)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(args.steps // 10, 1) == 0:
            curve.append((step, round(loss.item(), 4)))
    train_s = time.perf_counter() - t0
    model.eval()
    out = {"probe": "train", "variant": args.variant, "image_size": args.image_size, "steps": args.steps,
           "seed": args.seed, "train_s": round(train_s, 1), "loss_curve": curve, "cells": {}}
    with torch.no_grad():
        for k, (domain, region) in enumerate(CELLS):
            xe, ye = frames(domain, region, args.eval_frames, 900000 + k, args.image_size)
            out["cells"][f"{domain} {region}"] = _score(model(xe), ye)
    return out


def _ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, weights) of a ridge read-out of ``y`` from standardised ``x`` (bias column unpenalised)."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    z = torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    reg = alpha * torch.eye(z.shape[1], dtype=x.dtype)
    reg[-1, -1] = 0.0
    return mu, sd, torch.linalg.solve(z.T @ z + reg, z.T @ y)


def _apply(fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    mu, sd, w = fit
    return torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ w


def _knn(fit: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """The mean goal of the ``k`` nearest fitted frames in standardised feature space (a read-out that needs no
    linear code of the goal: nearby features, nearby goals)."""
    feats, goal = fit
    mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-8)
    near = torch.cdist((x - mu) / sd, (feats - mu) / sd).topk(k, largest=False).indices
    return goal[near].mean(1)


def readout(args: argparse.Namespace) -> list[dict]:
    from otplug.bench.env import CAMERA_KEY
    from otplug.bench.eval import load_policy
    from otplug.policy_encoder import resolve_encoder

    size = args.image_size
    fit_sim = frames("sim", "all", args.fit_frames, 700001, size, imagenet=False)
    fit_real = frames("real", "all", args.fit_frames, 700002, size, imagenet=False)
    tests = {f"{d} {r}": frames(d, r, args.eval_frames, 900000 + k, size, imagenet=False)
             for k, (d, r) in enumerate(CELLS)}
    results = []
    jobs = [(run, False) for run in args.runs] + ([(args.runs[0], True)] if args.untrained else [])
    for run, untrained in jobs:
        loaded = load_policy(run, "cpu")  # a run folder: its checkpoints/last
        policy = loaded.policy
        if untrained:  # the same policy and preprocessor, freshly initialised: the read-out's floor
            torch.manual_seed(0)
            policy = type(policy)(policy.config).eval()
        encoder = resolve_encoder(policy)

        def feats(img: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                x = loaded.preprocessor({CAMERA_KEY: img, "observation.state": torch.zeros(len(img), goal.shape[1])})
                return encoder.encode_feature_for_ot(CAMERA_KEY, x[CAMERA_KEY]).flatten(1).double().cpu()

        fs, fr = feats(*fit_sim), feats(*fit_real)
        on_sim = _ridge(fs, fit_sim[1].double(), args.alpha)
        on_real = _ridge(fr, fit_real[1].double(), args.alpha)
        out = {"probe": "readout", "run": str(run), "untrained": untrained, "feature_dim": int(fs.shape[1]),
               "fit_on_sim": {}, "fit_on_real": {}, "knn_fit_on_sim": {}, "knn_fit_on_real": {}}
        for name, (img, goal) in tests.items():
            f = feats(img, goal)
            out["fit_on_sim"][name] = _score(_apply(on_sim, f).float(), goal)
            out["knn_fit_on_sim"][name] = _score(_knn((fs, fit_sim[1]), f, args.k).float(), goal)
            if name.startswith("real"):
                out["fit_on_real"][name] = _score(_apply(on_real, f).float(), goal)
                out["knn_fit_on_real"][name] = _score(_knn((fr, fit_real[1]), f, args.k).float(), goal)
        results.append(out)
    return results


def pairs(args: argparse.Namespace) -> list[dict]:
    from otplug.bench.env import sample_scene

    root = Path(args.study_dir).expanduser() / "data"

    def goals(name: str) -> dict[int, np.ndarray]:
        """Each episode's goal, from the seeds the recording wrote (meta/otplug_bench.json)."""
        meta = json.loads((root / name / "meta" / "otplug_bench.json").read_text())
        return {i: np.asarray(sample_scene(s, meta["region"]).goal) for i, s in enumerate(meta["episode_seeds"])}

    real, sim = goals("real_A"), goals("sim_all")
    info = json.loads((root / "pair_info.json").read_text())
    ranks = max(len(v) for v in info.values())
    by_rank = [[float(np.linalg.norm(real[int(r)] - sim[int(p[k]["demo_name"])]))
                for r, p in info.items() if len(p) > k] for k in range(ranks)]
    same = [float(np.linalg.norm(g - s)) for g in real.values() for s in sim.values() if (s[0] < 0) == (g[0] < 0)]

    def summary(d: list[float]) -> dict[str, float]:
        a = np.asarray(d)
        return {"n": int(a.size), "median": round(float(np.median(a)), 3), "max": round(float(a.max()), 3),
                "within_hold_radius": round(float((a < HOLD_RADIUS).mean()), 3)}

    return [{"probe": "pairs", "study_dir": str(args.study_dir), "real_episodes": len(real), "sim_episodes": len(sim),
             "partner_goal_distance_by_rank": [summary(d) for d in by_rank],
             "partner_goal_distance_all": summary([x for d in by_rank for x in d]),
             "same_region_sim_goal_distance": summary(same)}]


def ends(args: argparse.Namespace) -> list[dict]:
    """Where the policies' closed-loop episodes end: per cell, the success rate and the fraction that ends on the
    other region's side (final agent x of the other sign than the goal's; ``EvalResult.ended_other_side``)."""
    from otplug.bench.eval import evaluate, load_policy

    results = []
    for run in args.runs:
        loaded = load_policy(run, "cpu")  # a run folder: its checkpoints/last
        out = {"probe": "ends", "run": str(run), "episodes": args.episodes, "scene_seed": args.scene_seed, "cells": {}}
        for domain, region in CELLS:
            res = evaluate(loaded.policy, domain=domain, region=region, episodes=args.episodes, seed=args.scene_seed,
                           batch=args.episodes, image_size=args.image_size, preprocessor=loaded.preprocessor,
                           postprocessor=loaded.postprocessor, keep_frames=0)
            out["cells"][f"{domain} {region}"] = {"success": round(res.success_rate, 3),
                                                  "ends_other_side": round(res.other_side_rate, 3)}
        results.append(out)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="probe", required=True)
    t = sub.add_parser("train", help="train a vision path on the goal itself")
    t.add_argument("--variant", choices=("act", "bn", "gn"), required=True)
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--train-frames", type=int, default=16000, help="sim frames (the study's sim dataset has 16000)")
    t.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("readout", help="read the goal out of trained policies' image features")
    r.add_argument("runs", nargs="+", help="otplug train run folders")
    r.add_argument("--fit-frames", type=int, default=4000, help="frames the read-out is fitted on, per domain")
    r.add_argument("--alpha", type=float, default=1.0, help="ridge penalty on the standardised features")
    r.add_argument("--k", type=int, default=10, help="neighbours of the k-nearest-neighbour read-out")
    r.add_argument("--untrained", action="store_true",
                   help="also read out of the first run's policy freshly initialised (the floor)")
    e = sub.add_parser("ends", help="where trained policies' closed-loop episodes end")
    e.add_argument("runs", nargs="+", help="otplug train run folders")
    e.add_argument("--episodes", type=int, default=100)
    e.add_argument("--scene-seed", type=int, default=200000, help="first episode seed (default: the dev scenes)")
    e.add_argument("--image-size", type=int, default=32)
    e.add_argument("--json", help="append each result as one JSON line to this file")
    g = sub.add_parser("pairs", help="goal distances of the study's DTW partners")
    g.add_argument("study_dir", help="an otplug study folder (its data/ is read)")
    g.add_argument("--json", help="append each result as one JSON line to this file")
    for q in (t, r):
        q.add_argument("--image-size", type=int, default=32)
        q.add_argument("--eval-frames", type=int, default=1000, help="per domain and region")
        q.add_argument("--json", help="append each result as one JSON line to this file")
    args = p.parse_args()
    results = {"train": lambda a: [train(a)], "readout": readout, "ends": ends, "pairs": pairs}[args.probe](args)
    for out in results:
        line = json.dumps(out)
        print(line)
        if args.json:
            with open(args.json, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
