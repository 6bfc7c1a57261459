"""Run under torchrun: a non-finite loss on rank 1 only must be seen as a divergence by every rank."""

import json
import sys

import torch
import torch.distributed as dist

from otplug.lerobot.train.metrics import finite_everywhere as _finite_everywhere


class Accel:  # the two members of accelerate.Accelerator that _finite_everywhere uses
    num_processes = 2
    device = torch.device("cpu")

    @staticmethod
    def reduce(t, reduction="sum"):
        dist.all_reduce(t)
        return t


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ok_all = _finite_everywhere(1.0, Accel())
    diverged = _finite_everywhere(float("nan") if rank == 1 else 1.0, Accel())
    with open(f"{sys.argv[1]}.{rank}", "w") as fh:
        json.dump({"ok_all": ok_all, "diverged": diverged}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
