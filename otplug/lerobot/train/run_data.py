"""What a run trains on, built once before the first step (:func:`open_run_data` -> :class:`RunData`).

Three kinds of data meet in a run:

* the **BC mixture**: the target (real) dataset, and the source (sim) datasets when ``--ot.bc_source_weight`` > 0;
* the **OT pairs**: target frames with their DTW partners in the sources (``--ot.pair_info`` / ``--ot.sources_file``);
* the **target pool**: real frames without demonstrations that only the OT loss sees (``--ot.target_pool``), each
  with a source row drawn for it.

Each dataset is opened once, with the target's time windows and feature names, and decoded once by the frame cache
where ``--ot.frame_cache`` says so (:mod:`otplug.lerobot.frame_cache`); the pair datasets are built once over those
same objects. The BC dataloader, the OT side's loaders (:class:`~otplug.lerobot.train.ot_step.OTSide`), the
diagnostics probe and ``run_info.json`` only read from the :class:`RunData`.
"""

from __future__ import annotations

from typing import Any

import attrs

from otplug.errors import OtplugError
from otplug.lerobot.pair_dataset import PairSampling
from otplug.lerobot.pair_mixture import make_pairs
from otplug.lerobot.pool import PoolPairs
from otplug.lerobot.train import setup

__all__ = ["RunData", "make_sampling", "open_run_data", "pair_seed"]


@attrs.frozen
class RunData:
    """The datasets of a run and the pair datasets over them (see the module docstring)."""

    #: the target (BC) dataset, as lerobot's factory built it (possibly held decoded in memory)
    dataset: Any
    #: the source datasets, in ``cfg.ot.sources`` order; empty when no source is opened
    sources: list[Any]
    #: the target pool's datasets, in ``cfg.ot.pool`` order; empty without ``--ot.target_pool``
    pool: list[Any]
    #: the OT pair dataset (:class:`~otplug.lerobot.pair_dataset.OTPairDataset` or
    #: :class:`~otplug.lerobot.pair_mixture.PairMixture`) when OT pairs are loaded, else None
    pairs: Any = None
    #: the pool's rows with their source rows (:class:`~otplug.lerobot.pool.PoolPairs`), or None
    pool_pairs: Any = None

    @property
    def camera_keys(self) -> list[str]:
        return list(self.dataset.meta.camera_keys)


def make_sampling(ot: Any) -> PairSampling:
    """The pair sampling options of the ``ot`` section (unset options keep :class:`PairSampling`'s defaults)."""
    wanted = {"mode": ot.weighting, "sharpness": ot.sharpness, "cutoff": ot.cutoff, "top_k": ot.top_k,
              "window_size": ot.window_size, "no_window": ot.no_window}
    try:
        return PairSampling(**{k: v for k, v in wanted.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise OtplugError(f"--ot sampling options: {exc}") from exc


def pair_seed(cfg: Any, rank: int) -> int:
    """The seed of a process's pair draws (the source frame drawn for a target frame, per epoch)."""
    return (cfg.seed or 0) + 7919 * rank


def open_run_data(cfg: Any, accelerator: Any) -> RunData:
    """Open every dataset of the run once (main process first, as lerobot-train does) and build the pair datasets
    over them."""
    dataset, sources = setup.open_datasets(cfg, accelerator)
    pool = setup.open_pool(cfg, dataset, accelerator)
    if not cfg.ot.active:
        return RunData(dataset=dataset, sources=sources, pool=pool)
    seed = pair_seed(cfg, accelerator.process_index)
    sampling = make_sampling(cfg.ot)
    pairs = make_pairs(dataset, sources, cfg.ot.sources, sampling, seed=seed)
    pool_pairs = None
    if pool:
        pool_pairs = PoolPairs(pool, cfg.ot.pool, sources, [s.weight for s in cfg.ot.sources], sampling, seed=seed)
    return RunData(dataset=dataset, sources=sources, pool=pool, pairs=pairs, pool_pairs=pool_pairs)
