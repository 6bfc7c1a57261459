"""Setting up a run from its config, with lerobot's own factories: accelerator, datasets, policy, processors,
optimizer, BC dataloader, sinks and ``run_info.json``. Each function is one step of ``lerobot-train``'s set-up
(same calls, same order, same RNG use), plus the source dataset and the combined statistics."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otplug.atomic import save_text
from otplug.errors import OtplugError
from otplug.lerobot.frame_cache import maybe_cache
from otplug.lerobot.mixture import MixtureDataset, WeightedFrameSampler, mixture_probabilities
from otplug.lerobot.pair_dataset import make_source_dataset
from otplug.lerobot.video_backend import default_backend

__all__ = [
    "check_supported",
    "combined_stats",
    "make_accelerator",
    "make_bc_dataloader",
    "make_processors",
    "make_run_sinks",
    "open_datasets",
    "open_pool",
    "set_optimizer_impl",
    "write_run_info",
    "contiguous_optimizer_state",
    "match_state_memory_format",
    "set_memory_format",
]


def check_supported(cfg: Any) -> None:
    """Reject the lerobot-train modes otplug train does not implement, before anything is loaded."""
    if cfg.is_reward_model_training:
        raise OtplugError("otplug train trains policies; use lerobot-train for reward models")
    if cfg.peft is not None:
        raise OtplugError("otplug train does not support --peft yet; use lerobot-train")
    if cfg.env is not None and cfg.env_eval_freq > 0:
        raise OtplugError("otplug train does not run simulation evaluation; set --env_eval_freq=0 and evaluate "
                          "checkpoints with `otplug eval` or lerobot-eval")
    if cfg.dataset.streaming:
        raise OtplugError("otplug train does not support streaming datasets yet")


def make_accelerator(cfg: Any) -> Any:
    """The accelerator ``lerobot-train`` would build for this config."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=True)
    force_cpu = cfg.trainable_config.device == "cpu"
    policy_dtype = getattr(cfg.trainable_config, "dtype", None)
    mixed_precision = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}.get(policy_dtype)
    if not hasattr(cfg.trainable_config, "dtype") and getattr(cfg.trainable_config, "use_amp", False):
        autocast_dtype = torch.get_autocast_dtype(torch.device(cfg.trainable_config.device).type)
        mixed_precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    accelerator = Accelerator(step_scheduler_with_optimizer=False, mixed_precision=mixed_precision,
                              kwargs_handlers=[ddp_kwargs], cpu=force_cpu)
    _warn_emulated_bf16(accelerator)
    return accelerator


def _warn_emulated_bf16(accelerator: Any) -> None:
    """bf16 autocast on a device without native bf16 arithmetic is emulated: correct, but slower than float32."""
    from otplug.environment import bf16_support

    if accelerator.mixed_precision != "bf16" or not accelerator.is_main_process:
        return
    kind = accelerator.device.type
    if kind in ("cpu", "cuda") and bf16_support(kind) is False:
        import warnings

        warnings.warn(f"--policy.use_amp: bf16 autocast on a {kind.upper()} without native bf16 arithmetic (no "
                      "AVX512-BF16 / AMX on a CPU) is emulated and usually slower than float32; run_info.json's "
                      "precision.bf16_native says so", RuntimeWarning, stacklevel=3)


def set_memory_format(policy: Any, memory_format: str) -> None:
    """``--ot.memory_format``: the policy's 4-d (conv) weights in channels_last (inputs follow the weights in torch's
    conv kernels); ``contiguous`` leaves the policy as lerobot built it. Checkpoints are written contiguous by
    safetensors either way, so a run resumes or evaluates in either format."""
    if memory_format == "channels_last":
        policy.to(memory_format=torch.channels_last)


def _state_tensors(optimizer: Any) -> Iterator[tuple[dict, str, torch.Tensor, torch.Tensor]]:
    """``(state dict, key, tensor, its parameter)`` for every tensor of the optimizer's state shaped like its
    parameter (AdamW's ``exp_avg``, ``exp_avg_sq``)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            for key, value in (st or {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.ndim == 4:
                    yield st, key, value, p


@contextlib.contextmanager
def contiguous_optimizer_state(optimizer: Any) -> Iterator[None]:
    """The optimizer's state tensors contiguous while a checkpoint is written (safetensors refuses channels_last
    tensors; the state of channels_last weights is channels_last), restored after."""
    swapped = [(st, key, value) for st, key, value, _ in _state_tensors(optimizer) if not value.is_contiguous()]
    for st, key, value in swapped:
        st[key] = value.contiguous()
    try:
        yield
    finally:
        for st, key, value in swapped:
            st[key] = value


def match_state_memory_format(optimizer: Any) -> None:
    """After a resume: each loaded state tensor in its parameter's memory format (as it was when saved), so the
    resumed update runs the kernels of the uninterrupted run."""
    for st, key, value, p in list(_state_tensors(optimizer)):
        if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            st[key] = value.contiguous(memory_format=torch.channels_last)


def open_datasets(cfg: Any, accelerator: Any) -> tuple[Any, list[Any]]:
    """The target (BC) dataset, built by lerobot's factory (main process first), and the source datasets
    (``cfg.ot.sources``, in order) when pairs or source BC rows are loaded, with the target's time windows,
    transforms and feature names."""
    from lerobot.datasets.factory import make_train_eval_datasets

    check_has_actions(cfg.dataset.repo_id, cfg.dataset.root)
    try:
        if accelerator.is_main_process:
            dataset, _eval = make_train_eval_datasets(cfg)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            dataset, _eval = make_train_eval_datasets(cfg)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise OtplugError(f"could not open the dataset {cfg.dataset.repo_id!r} (root {cfg.dataset.root}): {exc}") from exc
    sources = []
    for spec in cfg.ot.sources if cfg.ot.needs_source else []:
        label = "the source dataset" if len(cfg.ot.sources) == 1 else f"source {spec.name!r}:"
        try:
            sources.append(make_source_dataset(spec.repo_id, spec.root, like=dataset, rename_map=spec.rename_map))
        except OtplugError as exc:
            if len(cfg.ot.sources) == 1:
                raise
            raise OtplugError(f"{label} {exc}") from exc
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise OtplugError(f"could not open {label} {spec.repo_id!r} (root {spec.root}): {exc}") from exc
    say = print if accelerator.is_main_process else None
    store = cfg.ot.frame_cache_dir
    dataset = maybe_cache(dataset, cfg.ot.frame_cache, cfg.ot.frame_cache_max_gib, say=say, store=store)
    sources = [maybe_cache(src, cfg.ot.frame_cache, cfg.ot.frame_cache_max_gib, say=say, store=store)
               for src in sources]
    return dataset, sources


def check_has_actions(repo_id: Any, root: Any) -> None:
    """The BC dataset must have an ``action`` feature; a camera + state log without one is refused with one line
    (it can join the alignment as a ``--ot.target_pool`` dataset)."""
    if not root:
        return
    info = Path(root).expanduser() / "meta" / "info.json"
    try:
        features = json.loads(info.read_text()).get("features", {})
    except (OSError, ValueError, AttributeError):
        return  # lerobot's factory says what is wrong with the folder
    if isinstance(features, dict) and features and "action" not in features:
        raise OtplugError(f"--dataset.repo_id {repo_id} ({root}) has no 'action' feature (features: "
                          f"{', '.join(sorted(features))}): behaviour cloning trains on actions; a dataset without "
                          "them (a camera + state log) can join the alignment as a --ot.target_pool dataset")


def open_pool(cfg: Any, dataset: Any, accelerator: Any) -> list[Any]:
    """The target pool's datasets (``--ot.target_pool``), opened like the sources (the target's time windows and
    names, ``action`` optional) and decoded once when the frame cache says so."""
    if not cfg.ot.pool:
        return []
    from otplug.lerobot.pool import open_pool as _open

    pools = _open(cfg.ot.pool, like=dataset)
    say = print if accelerator.is_main_process else None
    return [maybe_cache(ds, cfg.ot.frame_cache, cfg.ot.frame_cache_max_gib, say=say, store=cfg.ot.frame_cache_dir)
            for ds in pools]


def set_optimizer_impl(optimizer: Any, impl: str) -> None:
    """``--ot.optimizer_impl``: torch's ``foreach`` / ``fused`` flags on every parameter group of lerobot's
    optimizer (read by torch at each step), or torch's defaults (``lerobot``: exactly what lerobot-train builds).
    An optimizer without the flag (a lerobot optimizer that is not a torch one) is left alone for ``lerobot`` and
    refused otherwise."""
    flags = {"lerobot": (None, None), "foreach": (True, None), "fused": (None, True)}[impl]
    groups = getattr(optimizer, "param_groups", None)
    if groups is None or not all("foreach" in g and "fused" in g for g in groups):
        if impl == "lerobot":
            return
        raise OtplugError(f"--ot.optimizer_impl={impl}: {type(optimizer).__name__} has no foreach/fused "
                          "implementation; use --ot.optimizer_impl=lerobot")
    for g in groups:
        g["foreach"], g["fused"] = flags


def combined_stats(dataset: Any, sources: Any) -> dict:
    """Normalisation statistics aggregated over target + sources (lerobot's ``aggregate_stats``) for the features
    all have; the target's own for the rest."""
    from lerobot.datasets import aggregate_stats

    def _np(stats: dict) -> dict:
        return {k: {s: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for s, v in ft.items()}
                for k, ft in stats.items()}

    sources = list(sources) if isinstance(sources, list | tuple) else [sources]
    keys = set(dataset.meta.stats).intersection(*(set(src.meta.stats) for src in sources))
    tgt = _np({k: v for k, v in dataset.meta.stats.items() if k in keys})
    srcs = [_np({k: v for k, v in src.meta.stats.items() if k in keys}) for src in sources]
    for n, src in enumerate(srcs):
        what = "the source" if len(srcs) == 1 else f"source {n}"
        for k in sorted(keys):
            shapes = {s: (np.shape(tgt[k].get(s)), np.shape(src[k].get(s))) for s in ("mean", "min") if s in tgt[k]}
            bad = {s: sh for s, sh in shapes.items() if sh[0] != sh[1]}
            if bad:
                a, b = next(iter(bad.values()))
                raise OtplugError(f"feature {k!r} has statistics of shape {a} in the target but {b} in {what} "
                                  "(different dimensions); a source must have the target's features "
                                  "(or use --ot.combine_stats=false)")
    try:
        combined = aggregate_stats([tgt, *srcs])
    except (ValueError, KeyError) as exc:
        raise OtplugError(f"could not combine target and source statistics ({exc}); use --ot.combine_stats=false "
                          "to normalise with the target's statistics only") from exc
    out = dict(dataset.meta.stats)
    out.update(combined)
    return out


def make_processors(cfg: Any, policy: Any, dataset: Any, sources: list[Any], device: torch.device) -> tuple[Any, Any]:
    """lerobot-train's pre/post processors; with source datasets and ``--ot.combine_stats`` (default) they
    normalise with target+sources statistics."""
    from lerobot.policies import make_pre_post_processors

    pretrained = cfg.policy.pretrained_path
    stats = dataset.meta.stats
    if sources and cfg.ot.combine_stats:
        stats = combined_stats(dataset, sources)
    kwargs: dict[str, Any] = {}
    if (pretrained and not cfg.resume) or not pretrained:
        kwargs["dataset_stats"] = stats
    if pretrained is not None:
        features = {**policy.config.input_features, **policy.config.output_features}
        pre_over = {
            "device_processor": {"device": device.type},
            "normalizer_processor": {"features": features, "norm_map": policy.config.normalization_mapping},
            "rename_observations_processor": {"rename_map": cfg.rename_map},
        }
        post_over = {"unnormalizer_processor": {"features": policy.config.output_features,
                                                "norm_map": policy.config.normalization_mapping}}
        if not cfg.resume:
            pre_over["normalizer_processor"]["stats"] = stats
            post_over["unnormalizer_processor"]["stats"] = stats
        kwargs["preprocessor_overrides"] = pre_over
        kwargs["postprocessor_overrides"] = post_over
    return make_pre_post_processors(policy_cfg=cfg.policy, pretrained_path=pretrained,
                                    pretrained_revision=getattr(cfg.policy, "pretrained_revision", None), **kwargs)


def make_bc_dataloader(cfg: Any, dataset: Any, sources: list[Any], device: torch.device, step: int,
                       accelerator: Any) -> Any:
    """lerobot-train's episode-aware BC dataloader, fast-forwarded to ``step`` on resume. With
    ``--ot.bc_source_weight`` > 0 it draws from the target + sources mixture instead (the source share split by
    the sources' weights; :mod:`otplug.lerobot.mixture`), resumable the same way."""
    from lerobot.common.train_utils import load_training_batch_size, load_training_num_processes
    from lerobot.datasets import EpisodeAwareSampler, compute_sampler_state
    from lerobot.utils.collate import lerobot_collate_fn

    drop_last = getattr(cfg.policy, "drop_n_last_frames", 0) or 0
    seed = cfg.seed if cfg.seed is not None else 0
    if cfg.ot.bc_source_weight > 0:
        dataset = MixtureDataset([dataset, *sources])
        probs = mixture_probabilities(dataset.sizes, cfg.ot.bc_source_weight, [s.weight for s in cfg.ot.sources],
                                      cfg.ot.bc_normalize_by_size)
        sampler = WeightedFrameSampler(dataset, probs, drop_n_last_frames=drop_last, seed=seed)
        has_language = getattr(dataset.parts[0].meta, "has_language_columns", False)  # items carry its keys
    else:
        sampler = EpisodeAwareSampler(
            dataset.meta.episodes["dataset_from_index"], dataset.meta.episodes["dataset_to_index"],
            episode_indices_to_use=dataset.episodes, drop_n_last_frames=drop_last, shuffle=True, seed=seed,
            absolute_to_relative_idx=dataset.absolute_to_relative_idx)
        has_language = dataset.meta.has_language_columns
    if cfg.resume and step > 0:
        n_proc = load_training_num_processes(cfg.checkpoint_path) or accelerator.num_processes
        bs = load_training_batch_size(cfg.checkpoint_path) or cfg.batch_size
        sampler.load_state_dict(compute_sampler_state(step, len(sampler), bs, n_proc))
    workers = cfg.num_workers > 0
    collate = lerobot_collate_fn if has_language else None
    return torch.utils.data.DataLoader(
        dataset, num_workers=cfg.num_workers, batch_size=cfg.batch_size, shuffle=False, sampler=sampler,
        pin_memory=device.type == "cuda", drop_last=False,
        collate_fn=dataset.collate(collate) if isinstance(dataset, MixtureDataset) else collate,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        persistent_workers=cfg.persistent_workers and workers,
        multiprocessing_context=cfg.dataloader_multiprocessing_context if workers else None)


def make_run_sinks(output_dir: Path, ot: Any, start_step: int = 0) -> Any:
    """The run's metric sinks (``metrics.jsonl`` always; ``--ot.sinks`` besides). The plan picture sink only
    when there is a plan. A run resumed at ``start_step`` keeps the metric rows up to that step, once each."""
    from otplug.sinks import make_sinks

    options = {"plan-heatmap": {"every": ot.plan_every}, "tensorboard": {"plan_every": ot.plan_every}}
    options.update(ot.sink_options_map)  # --ot.sink_options: plugin sinks' options; replaces a built-in's defaults
    names = [n for n in ot.sinks if ot.has_loss or n != "plan-heatmap"]
    return make_sinks(output_dir, names, options, start_step=start_step)


def write_run_info(output_dir: Path, cfg: Any, accelerator: Any, dataset: Any, sources: list[Any]) -> None:
    """``run_info.json``: what was trained on (datasets with fps, size and weight), with which OT options.
    ``sources`` lists every source dataset; ``source`` is the first (kept for readers of one-source runs)."""
    def _ds(ds: Any, repo_id: Any, root: Any) -> dict:
        return {"repo_id": repo_id, "root": str(root), "frames": ds.num_frames, "episodes": ds.num_episodes,
                "fps": ds.fps}

    info: dict[str, Any] = {
        "dataset": _ds(dataset, cfg.dataset.repo_id, cfg.dataset.root),
        "policy": cfg.policy.type,
        "world_size": accelerator.num_processes,
        "video_backend": {"used": cfg.dataset.video_backend, "default_here": default_backend().backend,
                          "reason": default_backend().reason},
        "ot": {k: getattr(cfg.ot, k) for k in ("enabled", "config", "lambda_ot", "layout", "batch_size", "scope",
                                                "source_repo_id", "source_root", "pair_info", "sources_file",
                                                "bc_source_weight", "cotrain_only", "frame_cache",
                                                "frame_cache_dir", "optimizer_impl", "memory_format",
                                                "target_pool", "pool_share")},
    }
    from otplug.environment import environment, environment_key, precision_info

    from otplug.lerobot.content_hash import kept_content_hash

    info["precision"] = precision_info(accelerator.device, str(accelerator.mixed_precision), cfg.ot.memory_format)
    # the content hash of each dataset where one is kept for its current files (a study's data always has one;
    # otplug.lerobot.content_hash.cached_content_hash computes and keeps it for any dataset), else None
    info["data_hashes"] = {"dataset": kept_content_hash(cfg.dataset.root) if cfg.dataset.root else None,
                           "sources": [kept_content_hash(spec.root) if spec.root else None
                                       for spec in (cfg.ot.sources if sources else [])]}
    if cfg.ot.pool:
        from otplug.lerobot.pool import pool_rows

        rows = pool_rows(cfg.ot.batch_size, cfg.ot.pool_share)
        info["target_pool"] = {"file": cfg.ot.target_pool, "share": cfg.ot.pool_share, "rows_per_step": rows,
                               "paired_rows_per_step": cfg.ot.batch_size - rows,
                               "datasets": [spec.summary() for spec in cfg.ot.pool]}
        info["data_hashes"]["target_pool"] = [kept_content_hash(spec.root) if spec.root else None
                                              for spec in cfg.ot.pool]
    info["environment"] = environment()
    info["environment_key"] = environment_key(info["environment"])
    if sources:
        info["sources"] = [{**spec.summary(), **_ds(src, spec.repo_id, spec.root)}
                           for spec, src in zip(cfg.ot.sources, sources, strict=True)]
        info["source"] = info["sources"][0]
    if cfg.ot.loss_config is not None:
        from otplug.config import dump_config

        # the config as parsed (native form, every setting): what readers use; the file's text only for showing
        info["ot_config"] = dump_config(cfg.ot.loss_config)
    if cfg.ot.config and Path(cfg.ot.config).is_file():
        info["ot_config_text"] = Path(cfg.ot.config).read_text()
    save_text(output_dir / "run_info.json", json.dumps(info, indent=2, default=str), "the run info")
