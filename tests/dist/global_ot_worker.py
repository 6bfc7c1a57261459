"""Run under torchrun: global-scope OT on each process's rows; writes loss, plan and averaged grads."""

import json
import sys

import torch
import torch.distributed as dist

import otplug
from otplug.distributed import global_ot, world

CFG = {"terms": [{"type": "embedding", "name": "e", "src_key": "obs", "weight_label": 0.5},
                 {"type": "embedding", "name": "e2", "src_key": "obs2"},
                 {"type": "action-slice", "name": "a", "dim_slice": [0, 2]}],
       "reg": 0.5, "tau_src": 1.0, "tau_tgt": 1.0, "solver": sys.argv[2] if len(sys.argv) > 2 else "sinkhorn"}


def data():
    g = torch.Generator().manual_seed(0)
    src = {"obs": torch.randn(6, 3, generator=g, dtype=torch.float64),
           "action": torch.randn(6, 4, 3, generator=g, dtype=torch.float64),
           "action_is_pad": torch.rand(6, 4, generator=g) > 0.7,
           "obs2": torch.randn(6, 3, generator=g, dtype=torch.float64)}
    tgt = {"obs": torch.randn(6, 3, generator=g, dtype=torch.float64) + 0.5,
           "action": torch.randn(6, 4, 3, generator=g, dtype=torch.float64),
           "obs2": torch.randn(6, 3, generator=g, dtype=torch.float64) - 0.5}
    return src, tgt


def encoder():
    torch.manual_seed(1)
    enc = torch.nn.Linear(3, 5, dtype=torch.float64)
    enc.encode_feature_for_ot = lambda key, x: torch.tanh(enc(x))
    return enc


def main():
    dist.init_process_group("gloo")
    rank, size = world()
    src, tgt = data()
    rows = torch.arange(6).chunk(size)[rank]
    local_src = {k: v[rows] for k, v in src.items()}
    local_tgt = {k: v[rows] for k, v in tgt.items()}
    enc = encoder()
    res = global_ot(otplug.OTLoss(CFG), local_src, local_tgt, encoder=enc)
    res.loss.backward()
    for p in enc.parameters():  # what DDP does: average gradients
        dist.all_reduce(p.grad)
        p.grad /= size
    if rank == 0:
        out = {"loss": res.metrics["ot_loss"], "plan": res.plan.tolist(),
               "grads": [p.grad.flatten().tolist() for p in enc.parameters()], "world_size": size}
        with open(sys.argv[1], "w") as fh:
            json.dump(out, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
