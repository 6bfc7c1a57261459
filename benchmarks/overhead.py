"""OT overhead per training step vs the BC step alone (CPU), for ACT and Diffusion, both layouts.

    .venv/bin/python benchmarks/overhead.py [--batches 8 32] [--policies act diffusion] [--repeat 5] [--json out.json]

For a batch of ``b`` rows in the policy forward and ``n = b/2`` OT pairs:

* ``bc``: forward + backward + optimizer step on ``b`` rows (what lerobot-train does);
* ``separate``: the same BC step plus the OT loss on a separate batch of ``n`` src + ``n`` tgt rows, encoded by
  ``encode_feature_for_ot`` in extra forward passes (the ``--ot.layout=separate`` path);
* ``single-pass``: the ``b`` rows *are* ``[src | tgt]`` (n + n); one forward gives the BC loss and, through
  forward hooks, the embeddings; then the solve (the ``--ot.layout=single-pass`` path, FeatureCapture +
  CapturedEncoder exactly as in training).

Policies use lerobot's default sizes (ACT ~ResNet18 + dim 512; Diffusion ResNet18 + U-Net) with no pretrained
weights, 64x64 images, synthetic tensors that are already normalised (no data loading in the timing). The OT
config is an image-embedding term plus an action label term. Reports the median step time over ``--repeat``
steps after one warm-up step (modes interleaved), and the overhead ratio against ``bc``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

CAM = "observation.images.front"
STATE_DIM, ACT_DIM, PX = 4, 2, 64


def make_policy(kind: str):
    from lerobot.configs.types import FeatureType, PolicyFeature

    inp = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
           CAM: PolicyFeature(type=FeatureType.VISUAL, shape=(3, PX, PX))}
    out = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACT_DIM,))}
    torch.manual_seed(0)
    if kind == "act":
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy

        cfg = ACTConfig(input_features=inp, output_features=out, device="cpu", pretrained_backbone_weights=None,
                        chunk_size=10, n_action_steps=10)
        return ACTPolicy(cfg)
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    cfg = DiffusionConfig(input_features=inp, output_features=out, device="cpu", pretrained_backbone_weights=None,
                          crop_shape=None, use_group_norm=True, n_obs_steps=2, horizon=16, n_action_steps=8)
    return DiffusionPolicy(cfg)


def make_batch(policy, rows: int) -> dict:
    cfg = policy.config
    if cfg.type == "act":
        T = cfg.chunk_size
        b = {"observation.state": torch.randn(rows, STATE_DIM), CAM: torch.rand(rows, 3, PX, PX)}
    else:
        T = cfg.horizon
        s = cfg.n_obs_steps
        b = {"observation.state": torch.randn(rows, s, STATE_DIM), CAM: torch.rand(rows, s, 3, PX, PX)}
    b["action"] = torch.randn(rows, T, ACT_DIM)
    b["action_is_pad"] = torch.zeros(rows, T, dtype=torch.bool)
    return b


OT_CONFIG = {
    "reg": 0.05, "tau_src": 1.0, "tau_tgt": 1.0, "cost_normalization": "mean",
    "terms": [{"type": "image", "name": "img", "src_key": CAM, "weight": 1.0},
              {"type": "action-slice", "name": "act", "weight": 0.5}],
}


def step_fn(policy, mode: str, b: int, ot, opt):
    from otplug.lerobot.capture import CapturedEncoder, FeatureCapture
    from otplug.policy_encoder import resolve_encoder, unwrap_policy

    n = b // 2
    batch = make_batch(policy, b)
    pairs = (make_batch(policy, n), make_batch(policy, n)) if mode == "separate" else None
    encoder = resolve_encoder(policy)
    capture = FeatureCapture(encoder, ot.embedding_keys) if mode == "single-pass" else None
    keys_src, keys_tgt = sorted(ot.required_keys("src")), sorted(ot.required_keys("tgt"))
    timings: dict[str, float] = {}

    def one() -> float:
        t0 = time.perf_counter()
        policy.train()
        if mode == "single-pass":
            with capture:
                loss, _ = policy.forward(batch)
            src = {k: batch[k][:n] for k in keys_src}
            tgt = {k: batch[k][n:2 * n] for k in keys_tgt}
            sides = {"src": slice(0, n), "tgt": slice(n, 2 * n)}
            t1 = time.perf_counter()
            res = ot(src, tgt, encoder=CapturedEncoder(capture, sides))
            timings["ot"] = time.perf_counter() - t1
            loss = loss + 0.1 * res.loss
        else:
            loss, _ = policy.forward(batch)
            if mode == "separate":
                t1 = time.perf_counter()
                res = ot(pairs[0], pairs[1], encoder=policy)
                timings["ot"] = time.perf_counter() - t1
                loss = loss + 0.1 * res.loss
        loss.backward()
        if capture is not None:
            capture.clear()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0

    del unwrap_policy
    return one, timings


def bench(kind: str, b: int, repeat: int) -> list[dict]:
    """Steps of the three modes are interleaved (bc, separate, single-pass, bc, ...) so that load from other
    processes on a shared machine hits all modes alike; medians over ``repeat`` rounds."""
    import otplug

    modes = ("bc", "separate", "single-pass")
    runs = {}
    for mode in modes:
        policy = make_policy(kind)
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
        ot = otplug.OTLoss(otplug.load_config(OT_CONFIG))
        one, timings = step_fn(policy, mode, b, ot, opt)
        one()  # warm-up
        runs[mode] = (one, timings, [], [])
    for _ in range(repeat):
        for mode in modes:
            one, timings, times, ot_times = runs[mode]
            times.append(one())
            if "ot" in timings:
                ot_times.append(timings["ot"])
    out = []
    for mode in modes:
        _, _, times, ot_times = runs[mode]
        row = {"policy": kind, "batch": b, "pairs": b // 2, "layout": mode, "step_s": statistics.median(times),
               "ot_call_s": statistics.median(ot_times) if ot_times else 0.0}
        out.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    base = out[0]["step_s"]
    for r in out:
        r["overhead"] = r["step_s"] / base - 1.0
    return out


def table(rows: list[dict]) -> str:
    lines = ["| policy | batch (rows) | OT pairs | layout | step (s) | OT call (s) | overhead vs BC |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ov = "—" if r["layout"] == "bc" else f"{r['overhead']:+.0%}"
        lines.append(f"| {r['policy']} | {r['batch']} | {r['pairs'] if r['layout'] != 'bc' else '—'} | {r['layout']} "
                     f"| {r['step_s']:.3f} | {r['ot_call_s']:.3f} | {ov} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--policies", nargs="+", default=["act", "diffusion"], choices=["act", "diffusion"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for kind in a.policies:
        for b in a.batches:
            rows += bench(kind, b, a.repeat)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
