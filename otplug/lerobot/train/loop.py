"""The training loop of ``otplug train``: ``lerobot-train`` plus an OT section.

Built from lerobot 0.6's own pieces (:mod:`~otplug.lerobot.train.setup`), following
``lerobot/scripts/lerobot_train.py`` step by step so that with OT off the run is ``lerobot-train`` (same RNG use,
same losses and gradient norms; tested bit for bit). Per step with OT on::

    total = bc_loss + lambda_ot * ot_loss

The data path, one room each: BC batch (:func:`~otplug.lerobot.train.setup.make_bc_dataloader`) -> pairs and
``[src | tgt | bc]`` rows (:class:`~otplug.lerobot.train.ot_step.OTSide`) -> preprocessor -> policy forward, OT
loss, backward, update (:func:`~otplug.lerobot.train.step.update_policy`) -> log window and reduction
(:mod:`~otplug.lerobot.train.metrics`) -> sinks (:mod:`otplug.sinks`) -> checkpoints (lerobot's).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lerobot.common.train_utils import (
    get_step_checkpoint_dir,
    load_training_state,
    save_checkpoint,
    should_save_checkpoint,
    update_last_checkpoint,
)
from lerobot.optim.factory import make_optimizer_and_scheduler
from lerobot.policies import make_policy
from lerobot.utils.constants import TRAINING_STATE_DIR
from lerobot.utils.random_utils import load_rng_state, set_seed
from tqdm import tqdm

from otplug.atomic import save_text, writing
from otplug.lerobot.mixture import source_fractions
from otplug.lerobot.train import setup
from otplug.lerobot.train.batches import check_image_range, images_to_float
from otplug.lerobot.train.metrics import Window, reduce_metrics
from otplug.lerobot.train.ot_step import OTSide
from otplug.lerobot.train.run_data import open_run_data
from otplug.lerobot.train.probe import make_recorder
from otplug.lerobot.train.run_dir import RunLock, write_checkpoint
from otplug.lerobot.train.step import check_finite_weights, update_policy
from otplug.policy_encoder import unwrap_policy

__all__ = ["train"]

LOGGED_IN_BAR = ("bc_loss", "ot_loss", "ot_pi_sum")


def strict_json(value: Any) -> Any:
    """``value`` with non-finite floats as None (strict JSON, as metrics.jsonl)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _seed_and_backends(cfg: Any, accelerator: Any) -> None:
    if cfg.seed is not None:
        set_seed(cfg.seed, accelerator=accelerator)
    torch.backends.cudnn.deterministic = bool(cfg.cudnn_deterministic)
    torch.backends.cudnn.benchmark = not cfg.cudnn_deterministic
    torch.backends.cuda.matmul.allow_tf32 = True


def _batches(dataloader: Any, cfg: Any, step: int) -> Iterator[dict]:
    """BC batches forever. On resume, creating the iterator draws a base seed from the global RNG; the
    uninterrupted run drew it before the checkpointed RNG state was taken, so draw it first and restore the RNG
    afterwards: the resumed run then continues exactly like the uninterrupted one (tested)."""
    def _cycle() -> Iterator[dict]:
        while True:
            yield from dataloader

    it = _cycle()
    if cfg.resume and step > 0:
        primed = next(it)
        load_rng_state(Path(cfg.checkpoint_path) / TRAINING_STATE_DIR)
        it = itertools.chain([primed], it)
    return it


def _save(cfg: Any, step: int, output_dir: Path, accelerator: Any, policy: Any, optimizer: Any, lr_scheduler: Any,
          processors: tuple[Any, Any], ot_side: Any) -> None:
    """lerobot's checkpoint of ``step`` (weights checked finite first: nothing non-finite is ever saved) and the
    OT side's own state beside it, written whole or not at all (:func:`write_checkpoint`), then ``last`` moved
    to it."""
    check_finite_weights(policy, step)

    def write(folder: Path) -> None:
        with setup.contiguous_optimizer_state(optimizer):
            save_checkpoint(checkpoint_dir=folder, step=step, cfg=cfg, policy=unwrap_policy(policy),
                            optimizer=optimizer, scheduler=lr_scheduler, preprocessor=processors[0],
                            postprocessor=processors[1], num_processes=accelerator.num_processes,
                            batch_size=cfg.batch_size)
        if ot_side is not None:
            ot_side.save(folder)

    ckpt = write_checkpoint(get_step_checkpoint_dir(output_dir, cfg.steps, step), write)
    with writing(ckpt.parent / "last", f"the link to checkpoint {ckpt.name}"):
        update_last_checkpoint(ckpt)


def train(cfg: Any, accelerator: Any = None, *, end_training: bool = True) -> dict[str, Any]:
    """Run training for a validated :class:`~otplug.lerobot.train.config.OTTrainConfig`. Returns a small summary
    (steps, seconds, first and last metrics, world size, output dir). ``end_training=False`` keeps the accelerator
    (and its process group) for another run in the same processes."""
    setup.check_supported(cfg)
    accelerator = accelerator if accelerator is not None else setup.make_accelerator(cfg)
    _seed_and_backends(cfg, accelerator)
    output_dir = Path(cfg.output_dir)
    # every process has parsed and validated its config (lerobot refuses an existing folder) before the main one
    # claims the run folder (atomic, exclusive, writable) and before any data is loaded
    accelerator.wait_for_everyone()
    lock = RunLock(output_dir, fresh=not cfg.resume).acquire() if accelerator.is_main_process else None
    try:
        summary = _train(cfg, accelerator, output_dir)
    finally:
        if lock is not None:
            lock.release()
    if end_training:
        accelerator.end_training()
    return summary


def _train(cfg: Any, accelerator: Any, output_dir: Path) -> dict[str, Any]:
    is_main, device, ot = accelerator.is_main_process, accelerator.device, cfg.ot
    accelerator.wait_for_everyone()
    data = open_run_data(cfg, accelerator)  # every dataset and pair dataset of the run, built once
    dataset, sources = data.dataset, data.sources
    policy = make_policy(cfg=cfg.policy, ds_meta=dataset.meta, rename_map=cfg.rename_map)
    setup.set_memory_format(policy, ot.memory_format)
    accelerator.wait_for_everyone()
    preprocessor, postprocessor = setup.make_processors(cfg, policy, dataset, sources, device)
    optimizer, lr_scheduler = make_optimizer_and_scheduler(cfg, policy)
    step = 0
    if cfg.resume:
        step, optimizer, lr_scheduler = load_training_state(cfg.checkpoint_path, optimizer, lr_scheduler)
        setup.match_state_memory_format(optimizer)
    setup.set_optimizer_impl(optimizer, ot.optimizer_impl)  # after a resume: a checkpoint carries the saved flags
    dataloader = setup.make_bc_dataloader(cfg, dataset, sources, device, step, accelerator)
    accelerator.wait_for_everyone()
    policy, optimizer, dataloader, lr_scheduler = accelerator.prepare(policy, optimizer, dataloader, lr_scheduler)
    ot_side = OTSide(cfg, data, policy, preprocessor, accelerator, step) if ot.active else None
    if ot_side is not None and cfg.resume and step > 0:
        ot_side.load(cfg.checkpoint_path)
    batches = _batches(dataloader, cfg, step)

    sinks = None
    if is_main:
        sinks = setup.make_run_sinks(output_dir, ot, start_step=step)
        setup.write_run_info(output_dir, cfg, accelerator, dataset, sources)
    log_every = ot.log_every or cfg.log_freq
    probe = make_recorder(cfg, dataset, sources, policy, preprocessor, output_dir, step) if is_main else None
    unwrapped = unwrap_policy(policy)
    if probe is not None and probe[0].due(step) and step == 0:
        sinks.log(0, probe[0].record(0, probe[1], module=unwrapped))
    window, first, last = Window(), {}, {}
    source_names = [spec.name for spec in ot.sources] if sources else []
    progbar = tqdm(total=cfg.steps - step, desc="otplug train", unit="step", disable=not is_main, leave=True,
                   dynamic_ncols=True)
    t_start = time.perf_counter()
    policy.train()
    try:
        for _ in range(step, cfg.steps):
            t0 = time.perf_counter()
            batch = images_to_float(next(batches), dataset.meta.camera_keys)  # lerobot-train's step, per batch
            bc_source = source_fractions(batch, source_names)  # the mixture's part marker never reaches the policy
            batch, n_pairs = ot_side.build_batch(batch) if ot_side is not None else (batch, 0)
            check_image_range(batch, dataset.meta.camera_keys)
            batch = preprocessor(batch)
            data_s = time.perf_counter() - t0
            result = update_policy(policy, batch, n_pairs, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                   accelerator=accelerator, grad_clip_norm=cfg.optimizer.grad_clip_norm,
                                   ot_side=ot_side, lambda_ot=ot.lambda_ot, on_nonfinite=ot.on_nonfinite,
                                   step=step + 1)
            step += 1
            metrics = {**result.metrics, "dataloading_s": data_s}
            metrics.update(bc_source)
            window.add(metrics)
            first = first or dict(metrics)
            last = dict(metrics)

            if log_every > 0 and (step % log_every == 0 or step == cfg.steps):
                reduced = reduce_metrics(window.means(), accelerator)
                if probe is not None and probe[0].due(step):
                    reduced.update(probe[0].record(step, probe[1], module=unwrapped))
                if is_main:
                    sinks.log(step, reduced)
                    progbar.set_postfix({k: f"{reduced[k]:.3g}" for k in LOGGED_IN_BAR if k in reduced}, refresh=False)
                window.reset()
            if is_main and result.ot is not None and sinks.wants_plan(step):
                sinks.log_plan(step, result.ot.plan.float().cpu().numpy(), {"step": step})
            progbar.update(1)

            if cfg.save_checkpoint and should_save_checkpoint(step, cfg.save_freq, cfg.steps):
                if is_main:
                    _save(cfg, step, output_dir, accelerator, policy, optimizer, lr_scheduler,
                          (preprocessor, postprocessor), ot_side)
                accelerator.wait_for_everyone()
    finally:
        progbar.close()
        if sinks is not None:
            sinks.close()

    accelerator.wait_for_everyone()
    summary = {"steps": step, "seconds": time.perf_counter() - t_start, "first": first, "last": last,
               "world_size": accelerator.num_processes, "output_dir": str(output_dir)}
    if is_main:
        save_text(output_dir / "train_summary.json", json.dumps(strict_json(summary), indent=2, allow_nan=False),
                  "the run summary")
    return summary
