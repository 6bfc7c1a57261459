"""``otplug train``: ``lerobot-train`` plus an OT section.

Built from lerobot 0.6's own pieces (``make_train_eval_datasets``, ``make_policy``,
``make_pre_post_processors``, ``make_optimizer_and_scheduler``, ``EpisodeAwareSampler``, accelerate,
``save_checkpoint`` / ``load_training_state``), following ``lerobot/scripts/lerobot_train.py`` step by step so
that with OT off the run is ``lerobot-train`` (same RNG use, same losses and gradient norms; tested).

Per step with OT on::

    total = bc_loss + lambda_ot * ot_loss

* ``--ot.layout=single-pass`` (default): ``ot.batch_size`` pairs are drawn from the OT pair dataset and put in
  front of the BC rows, ``[src | tgt | bc]``; one policy forward gives the BC loss over all rows and, through
  forward hooks on the encoder modules, the embeddings of the src/tgt rows. OT then costs the solve.
* ``--ot.layout=separate``: the pairs come as their own batch, go through the same uint8->float step and the
  same preprocessor instance, are aligned to the BC batch by the alignment policy, and are encoded in extra
  forward passes of the encoder (``encode_feature_for_ot``); the BC loss covers the BC rows only.

Short flags (SPEC §7): ``--demo``, ``--steps N``, ``--output-dir DIR``, ``--ot-scope rank|global``,
``--resume``. Everything else is draccus syntax (``--policy.type=act``, ``--ot.lambda_ot=0.1``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from otplug.errors import OtplugError

log = logging.getLogger("otplug.train")

__all__ = ["main", "parse_config", "train"]

HELP = """usage: otplug train [--demo] [--steps N] [--output-dir DIR] [--ot-scope rank|global] [--resume]
                    [lerobot-train options ...] [--ot.OPTION=VALUE ...]

Train a LeRobot policy with bc_loss + lambda_ot * ot_loss. Every lerobot-train option works
(--dataset.repo_id, --dataset.root, --policy.type, --batch_size, --num_workers, --save_freq, --log_freq, ...).

short flags:
  --demo               train a small ACT policy on the embedded synthetic sim/real pair (offline, CPU)
  --steps N            number of optimizer steps (= --steps=N)
  --output-dir DIR     run directory (= --output_dir=DIR); must not exist unless --resume
  --ot-scope S         rank (each process solves its own pairs) or global (one plan over all processes)
  --resume             continue the run in --output-dir from its last checkpoint

OT options (--ot.NAME=VALUE):
  config PATH          OT config file (TOML/YAML/JSON; check it with `otplug check-config PATH`)
  enabled BOOL         false (or lambda_ot=0) trains plain BC and loads no OT batch
  lambda_ot FLOAT      weight of the OT loss (default 0.1)
  source_repo_id, source_root    the source (sim) dataset; --dataset.* is the target (real) one
  pair_info PATH       DTW pairings (`otplug pair`)
  layout L             single-pass (default; OT rows inside the BC batch) or separate
  batch_size N         OT pairs per step and process (default 8)
  alignment NAME       alignment policy of the separate layout (default rank)
  weighting, sharpness, cutoff, top_k, window_size, no_window    pair sampling
  combine_stats BOOL   normalise with target+source statistics (default true)
  capture_fallback     encode (default) or error, for keys single-pass cannot capture
  sinks LIST           e.g. '[console,plan-heatmap,tensorboard]' (metrics.jsonl is always written)
  plan_every N         plan heatmap every N steps (default 50)

`otplug train --help-all` prints every lerobot option.
"""

SHORT_FLAGS = {"--steps": "steps", "--output-dir": "output_dir", "--ot-scope": "ot.scope"}


# ---------------------------------------------------------------------------------------------------------------------
# command line

@contextlib.contextmanager
def _argv(args: Sequence[str]) -> Iterator[None]:
    """lerobot's config code reads sys.argv (path args, resume); show it ours while parsing."""
    saved = sys.argv
    sys.argv = ["otplug train", *args]
    try:
        yield
    finally:
        sys.argv = saved


def _expand_short_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Turn ``--steps 5`` into ``--steps=5`` etc.; pull out ``--demo`` / ``--resume``."""
    out: list[str] = []
    opts: dict[str, Any] = {"demo": False, "resume": False, "no_baseline": False}
    it = iter(range(len(argv)))
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, val = a.partition("=")
        if a in ("--demo",):
            opts["demo"] = True
        elif a == "--no-baseline":
            opts["no_baseline"] = True
        elif a == "--resume" or (name == "--resume" and eq):
            opts["resume"] = (val.lower() in ("1", "true", "yes")) if eq else True
        elif name in SHORT_FLAGS:
            if not eq:
                if i + 1 >= len(args):
                    raise OtplugError(f"{name} needs a value")
                val = args[i + 1]
                i += 1
            out.append(f"--{SHORT_FLAGS[name]}={val}")
            if name == "--output-dir":
                opts["output_dir"] = val
            if name == "--steps":
                opts["steps"] = val
        else:
            out.append(a)
        i += 1
    del it
    return out, opts


def _last_checkpoint(output_dir: Path) -> Path:
    last = output_dir / "checkpoints" / "last"
    cfg = last / "pretrained_model" / "train_config.json"
    if not cfg.is_file():
        raise OtplugError(f"--resume: no checkpoint in {output_dir} (expected {cfg}); "
                          "train first, or point --output-dir at the run to continue")
    return last


def parse_config(cli_args: Sequence[str], *, resume: bool = False, output_dir: str | None = None):
    """Parse lerobot-train style arguments into an :class:`OTTrainConfig` and validate it."""
    import draccus
    import lerobot.policies  # noqa: F401 - registers the policy config choices (--policy.type)
    from lerobot.configs import parser
    from lerobot.utils.import_utils import register_third_party_plugins

    from otplug.lerobot.trainconfig import OTTrainConfig

    register_third_party_plugins()
    args = list(cli_args)
    if resume:
        if not output_dir:
            output_dir = parser.parse_arg("output_dir", args)
        if not output_dir:
            raise OtplugError("--resume needs --output-dir DIR (the run to continue)")
        ckpt = _last_checkpoint(Path(output_dir))
        args = [a for a in args if not a.startswith("--output_dir")]
        args += ["--resume=true", f"--config_path={ckpt / 'pretrained_model' / 'train_config.json'}"]
    if not resume and not any(a.startswith("--policy.push_to_hub") for a in args) and any(
            a.startswith(("--policy.type", "--policy.path")) for a in args):
        args.append("--policy.push_to_hub=false")  # offline by default; lerobot would demand a hub repo_id
    with _argv(args):
        try:
            for plugin_arg, plugin_path in parser.parse_plugin_args(parser.PLUGIN_DISCOVERY_SUFFIX, args).items():
                parser.load_plugin(plugin_path)
                args = parser.filter_arg(plugin_arg, args)
            config_path = parser.parse_arg("config_path", args)
            args = parser.filter_path_args(OTTrainConfig.__get_path_fields__(), args)
            if config_path:
                config_path = parser.extract_path_fields_from_config(config_path, OTTrainConfig.__get_path_fields__())
                args = parser.filter_arg("config_path", args)
                cfg = OTTrainConfig.from_pretrained(config_path, cli_args=args)
            else:
                cfg = draccus.parse(config_class=OTTrainConfig, config_path=None, args=args)
            cfg.validate()
        except OtplugError:
            raise
        except SystemExit as exc:  # argparse inside draccus already printed the problem
            raise OtplugError("invalid training options (see above); `otplug train --help` lists them") from exc
        except FileExistsError as exc:
            raise OtplugError(f"{exc} (add --resume to continue that run)") from exc
        except (ValueError, TypeError, KeyError, FileNotFoundError, draccus.utils.DecodingError) as exc:
            hint = " (give --dataset.repo_id and --dataset.root, or try `otplug train --demo`)" if "dataset" in str(
                exc) and "Missing" in str(exc) else "; `otplug train --help` lists the options"
            raise OtplugError(f"invalid training options: {exc}{hint}") from exc
    _check_ot_section(cfg)
    return cfg


def _check_ot_section(cfg) -> None:
    from otplug.lerobot.trainconfig import LAYOUTS, SCOPES

    ot = cfg.ot
    if ot.layout not in LAYOUTS:
        raise OtplugError(f"--ot.layout must be one of {', '.join(LAYOUTS)}, got {ot.layout!r}")
    if ot.scope not in SCOPES:
        raise OtplugError(f"--ot.scope / --ot-scope must be one of {', '.join(SCOPES)}, got {ot.scope!r}")
    if ot.capture_fallback not in ("encode", "error"):
        raise OtplugError(f"--ot.capture_fallback must be 'encode' or 'error', got {ot.capture_fallback!r}")
    if ot.lambda_ot < 0 or not math.isfinite(ot.lambda_ot):
        raise OtplugError(f"--ot.lambda_ot must be >= 0, got {ot.lambda_ot}")
    if not ot.active:
        return
    if ot.batch_size < 1:
        raise OtplugError(f"--ot.batch_size must be >= 1, got {ot.batch_size}")
    if ot.cotrain_only and ot.layout != "single-pass":
        raise OtplugError("--ot.cotrain_only needs --ot.layout=single-pass (the pairs become BC rows)")
    missing = [f"--ot.{n}" for n in ("source_repo_id", "pair_info") if not getattr(ot, n)]
    if not ot.cotrain_only and not ot.config:
        missing.append("--ot.config")
    if missing:
        raise OtplugError(f"OT is enabled but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set "
                          "(or disable it with --ot.enabled=false)")
    if not Path(ot.pair_info).is_file():
        raise OtplugError(f"--ot.pair_info: no such file {ot.pair_info}")
    if ot.source_root and not Path(ot.source_root).is_dir():
        raise OtplugError(f"--ot.source_root: no such directory {ot.source_root}")
    if ot.config and not Path(ot.config).is_file():
        raise OtplugError(f"--ot.config: no such file {ot.config}")
    if ot.config and not ot.cotrain_only:
        otplug_load_config(ot.config)  # fail fast, before datasets and the policy are built
    if cfg.dataset.root and not Path(cfg.dataset.root).is_dir():
        raise OtplugError(f"--dataset.root: no such directory {cfg.dataset.root}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(HELP)
        return 0
    if "--help-all" in argv:
        from lerobot.configs import parser

        from otplug.lerobot.trainconfig import OTTrainConfig

        parser.print_scoped_help(OTTrainConfig, ["--help"])
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from otplug.lerobot.demo_data import quiet_lerobot

    quiet_lerobot()  # lerobot's torchcodec fallback notice is a traceback-looking block; we use pyav anyway
    args, opts = _expand_short_flags(argv)
    if opts["demo"]:
        from otplug.lerobot.demo import run_demo

        return run_demo(args, resume=opts["resume"], output_dir=opts.get("output_dir"),
                        steps=opts.get("steps"), baseline=not opts["no_baseline"])
    cfg = parse_config(args, resume=opts["resume"], output_dir=opts.get("output_dir"))
    try:
        train(cfg)
    except OSError as exc:
        if not _is_network_error(exc):
            raise
        raise OtplugError(
            f"a download was attempted and failed ({exc}). otplug trains offline: pass "
            "--policy.pretrained_backbone_weights=null (ImageNet backbone weights come from the torchvision URL), "
            "give local datasets with --dataset.root / --ot.source_root, or pre-fill the torch/HF caches"
        ) from exc
    return 0


def _is_network_error(exc: BaseException) -> bool:
    import urllib.error

    seen = exc
    while seen is not None:
        if isinstance(seen, (urllib.error.URLError, ConnectionError, TimeoutError)) or "offline" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def otplug_load_config(path):
    from otplug.config import load_config

    return load_config(path)


# ---------------------------------------------------------------------------------------------------------------------
# batches

def images_to_float(batch: dict[str, Any], camera_keys: Sequence[str]) -> dict[str, Any]:
    """lerobot-train's uint8 -> float32 [0, 1] step (in place, like lerobot)."""
    import torch

    for key in camera_keys:
        if key in batch and batch[key].dtype == torch.uint8:
            batch[key] = batch[key].to(dtype=torch.float32) / 255.0
    return batch


def concat_batches(parts: Sequence[Mapping[str, Any]], required: Sequence[str] = ()) -> dict[str, Any]:
    """Row-concatenate collated lerobot batches on their common keys (tensors by ``cat``, lists by ``+``)."""
    import torch

    common = set(parts[0])
    for p in parts[1:]:
        common &= set(p)
    missing = sorted(k for k in required if k not in common)
    if missing:
        sides = [sorted(k for k in missing if k not in p) for p in parts]
        raise OtplugError(f"single-pass layout: key(s) {missing} missing from part of the batch "
                          f"([src, tgt, bc] lack {sides}); the source dataset must have the policy's features")
    out: dict[str, Any] = {}
    for k in parts[0]:
        if k not in common:
            continue
        vals = [p[k] for p in parts]
        if isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape[1:]) for v in vals}
            if len(shapes) != 1:
                raise OtplugError(f"single-pass layout: {k!r} has different shapes across [src, tgt, bc]: "
                                  f"{[tuple(v.shape) for v in vals]}")
            out[k] = torch.cat(vals, dim=0)
        elif isinstance(vals[0], list | tuple):
            out[k] = [x for v in vals for x in v]
        else:
            out[k] = vals[0]
    return out


def _rows(batch: Mapping[str, Any], keys: Sequence[str], sl: slice) -> dict[str, Any]:
    """Rows ``sl`` of the ``keys`` present in ``batch`` (the loss's required and optional keys, so the
    ``*_is_pad`` masks and custom ``pad_key``s travel with the values)."""
    return {k: batch[k][sl] for k in keys if k in batch}


def _finite_everywhere(value: float, accelerator) -> bool:
    """``value`` is finite on every process. All processes take part, so a divergence on one of them stops
    every one of them at the same step instead of leaving the others waiting in the next collective."""
    finite = math.isfinite(value)
    if accelerator is None or accelerator.num_processes == 1:
        return finite
    import torch

    bad = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
    return float(accelerator.reduce(bad, reduction="sum").item()) == 0.0


def gather_for_ot(ot_loss, src: Mapping[str, Any], tgt: Mapping[str, Any], encoder: Any, accelerator,
                  scope: str = "rank") -> Any:
    """The one place where the OT scope is applied: ``rank`` solves this process's pairs; ``global`` solves one
    plan over the pairs of every process (:func:`otplug.distributed.global_ot`: values gathered, features with
    gradients for this process's rows only, loss scaled so DDP's gradient average equals the global gradient)."""
    if accelerator is None or accelerator.num_processes == 1 or scope == "rank":
        return ot_loss(src, tgt, encoder=encoder)
    from otplug.distributed import scoped_ot

    return scoped_ot(ot_loss, src, tgt, encoder=encoder, scope=scope)


# ---------------------------------------------------------------------------------------------------------------------
# OT side

class OTSide:
    """Everything the OT loss needs in the loop: pair loader, loss, capture, alignment."""

    def __init__(self, cfg, dataset, source, policy, preprocessor, accelerator, start_step: int) -> None:
        import torch

        from otplug.lerobot.pair_dataset import OTPairDataset

        self.cfg = cfg
        self.ot_cfg = cfg.ot
        self.accelerator = accelerator
        self.camera_keys = list(dataset.meta.camera_keys)
        self.preprocessor = preprocessor
        self.layout = cfg.ot.layout
        self.scope = cfg.ot.scope
        self.pair_dataset = OTPairDataset(dataset, source, cfg.ot.pair_info, _make_sampling(cfg.ot),
                                          seed=(cfg.seed or 0) + 7919 * accelerator.process_index)
        gen = torch.Generator()
        gen.manual_seed((cfg.seed or 0) * 1_000_003 + start_step + 104_729 * accelerator.process_index)
        self.loader = make_pair_loader(self.pair_dataset, cfg.ot.batch_size, cfg.num_workers, gen)
        if len(self.loader) == 0:
            raise OtplugError(f"--ot.batch_size={cfg.ot.batch_size} is larger than the OT pair dataset "
                              f"({len(self.pair_dataset)} target frames)")
        self._iter = cycle_epochs(self.pair_dataset, self.loader)
        self.loss = None
        self.capture = None
        self.fallback_keys: list[str] = []
        pcfg = _unwrap(policy).config
        self.policy_inputs = sorted(set(pcfg.input_features) | set(pcfg.output_features))
        if cfg.ot.cotrain_only:
            return
        import otplug
        from otplug.encoders import resolve_encoder
        from otplug.lerobot.encoders import FeatureCapture

        self.loss = otplug.OTLoss(otplug.load_config(cfg.ot.config))
        self.src_keys = sorted(self.loss.required_keys("src") | self.loss.optional_keys("src"))
        self.tgt_keys = sorted(self.loss.required_keys("tgt") | self.loss.optional_keys("tgt"))
        self.embed_keys = sorted(self.loss.embedding_keys)
        self.encoder = resolve_encoder(policy) if self.embed_keys else None
        if self.layout == "single-pass" and self.embed_keys:
            own = hasattr(_unwrap(policy), "encode_feature_for_ot")
            self.capture = FeatureCapture(None if own else self.encoder, self.embed_keys)
            unsupported = self.capture.unsupported
            if unsupported:
                if cfg.ot.capture_fallback == "error":
                    raise OtplugError("single-pass layout cannot capture " + "; ".join(
                        f"{k}: {why}" for k, why in unsupported.items()) + " (use --ot.capture_fallback=encode or "
                        "--ot.layout=separate)")
                self.fallback_keys = sorted(unsupported)
                if accelerator.is_main_process:
                    warnings.warn(
                        f"single-pass layout: no capture hook for {self.fallback_keys}; those embeddings are computed "
                        "by an extra encoder pass on the OT rows (metric ot_capture_fallback)", stacklevel=2)
        self.alignment = None
        if self.layout == "separate":
            from otplug.plugins import get_registry

            factory = get_registry().get("alignment", cfg.ot.alignment, field="--ot.alignment").load()
            self.alignment = factory()

    def next_pairs(self) -> tuple[dict, dict]:
        src, tgt = next(self._iter)
        return dict(src), dict(tgt)

    # single-pass ---------------------------------------------------------------------------------------
    def build_single_pass(self, bc_batch: dict) -> tuple[dict, int]:
        src, tgt = self.next_pairs()
        n = len(next(v for v in src.values() if hasattr(v, "shape")))
        batch = concat_batches([src, tgt, bc_batch], required=self.policy_inputs)
        return batch, n

    def single_pass_loss(self, batch: dict, n: int):
        from otplug.lerobot.encoders import CapturedEncoder

        src_sl, tgt_sl = slice(0, n), slice(n, 2 * n)
        src = _rows(batch, self.src_keys, src_sl)
        tgt = _rows(batch, self.tgt_keys, tgt_sl)
        encoder = None
        if self.embed_keys:
            sides = {k: [(src[k], src_sl)] if k in src else [] for k in self.embed_keys}
            for k in self.embed_keys:
                if k in tgt:
                    sides[k].append((tgt[k], tgt_sl))
            encoder = CapturedEncoder(self.capture, sides, fallback=self.encoder if self.fallback_keys else None)
        res = gather_for_ot(self.loss, src, tgt, encoder, self.accelerator, self.scope)
        res.metrics["ot_capture_fallback"] = float(len(self.fallback_keys))
        return res

    # separate ------------------------------------------------------------------------------------------
    def separate_loss(self, bc_batch: dict, policy, device):
        src, tgt = self.next_pairs()
        src = self.preprocessor(images_to_float(src, self.camera_keys))
        tgt = self.preprocessor(images_to_float(tgt, self.camera_keys))
        if self.alignment is not None:
            src = self.alignment(src, bc_batch, device)
            tgt = self.alignment(tgt, bc_batch, device)
        return gather_for_ot(self.loss, src, tgt, policy if self.encoder is not None else None, self.accelerator,
                             self.scope)


def make_pair_loader(pair_dataset, batch_size: int, num_workers: int, generator):
    """The OT pair loader. Its workers are never persistent: a persistent worker keeps its copy of the dataset
    from epoch 0, so :meth:`OTPairDataset.set_epoch` would not reach it and every epoch would repeat epoch 0's
    source draws. New workers per OT epoch see the current epoch."""
    import torch

    from otplug.lerobot.pair_dataset import collate_pairs

    return torch.utils.data.DataLoader(pair_dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                       drop_last=True, num_workers=num_workers, collate_fn=collate_pairs,
                                       persistent_workers=False)


def cycle_epochs(pair_dataset, loader) -> Iterator[Any]:
    """Batches of ``loader`` forever, with ``pair_dataset.set_epoch(e)`` before epoch ``e``."""
    epoch = 0
    while True:
        pair_dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def _unwrap(policy):
    from otplug.lerobot.encoders import unwrap_policy

    return unwrap_policy(policy)


def _make_sampling(ot) -> Any:
    import inspect

    from otplug.lerobot.pair_dataset import PairSampling

    wanted = {"mode": ot.weighting, "sharpness": ot.sharpness, "cutoff": ot.cutoff, "top_k": ot.top_k,
              "window_size": ot.window_size, "no_window": ot.no_window}
    try:
        import attrs

        names = {a.name for a in attrs.fields(PairSampling)}
    except Exception:  # noqa: BLE001 - not an attrs class
        names = set(inspect.signature(PairSampling).parameters)
    kwargs = {k: v for k, v in wanted.items() if k in names and v is not None}
    try:
        return PairSampling(**kwargs)
    except (TypeError, ValueError) as exc:
        raise OtplugError(f"--ot sampling options: {exc}") from exc


def _combined_stats(dataset, source):
    from lerobot.datasets import aggregate_stats

    import numpy as np

    def _np(stats):
        return {k: {s: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for s, v in ft.items()} for k, ft in stats.items()}

    keys = set(dataset.meta.stats) & set(source.meta.stats)
    tgt = _np({k: v for k, v in dataset.meta.stats.items() if k in keys})
    src = _np({k: v for k, v in source.meta.stats.items() if k in keys})
    try:
        combined = aggregate_stats([tgt, src])
    except (ValueError, KeyError) as exc:
        raise OtplugError(f"could not combine target and source statistics ({exc}); use --ot.combine_stats=false "
                          "to normalise with the target's statistics only") from exc
    out = dict(dataset.meta.stats)
    out.update(combined)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# metrics

class Window:
    """Averages scalar metrics over a log window (lerobot averages too)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.sums[k] += float(v)
                self.counts[k] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


MAX_REDUCED = ("update_s", "dataloading_s")


def reduce_metrics(metrics: dict[str, float], accelerator) -> dict[str, float]:
    """Average across processes (timings: max); every process must call it. Adds ``world_size`` when > 1."""
    if accelerator.num_processes == 1:
        return metrics
    import torch.distributed as dist

    gathered: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, metrics)
    out: dict[str, float] = {}
    keys = sorted({k for g in gathered for k in g})
    for k in keys:
        vals = [g[k] for g in gathered if k in g]
        out[k] = max(vals) if k in MAX_REDUCED else sum(vals) / len(vals)
    out["world_size"] = accelerator.num_processes
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the loop

def _make_accelerator(cfg):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=True)
    force_cpu = cfg.trainable_config.device == "cpu"
    policy_dtype = getattr(cfg.trainable_config, "dtype", None)
    mixed_precision = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}.get(policy_dtype)
    if not hasattr(cfg.trainable_config, "dtype") and getattr(cfg.trainable_config, "use_amp", False):
        autocast_dtype = torch.get_autocast_dtype(torch.device(cfg.trainable_config.device).type)
        mixed_precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    return Accelerator(step_scheduler_with_optimizer=False, mixed_precision=mixed_precision,
                       kwargs_handlers=[ddp_kwargs], cpu=force_cpu)


def _check_dataset_has(dataset, ot_side) -> None:
    if ot_side is None or ot_side.loss is None:
        return
    feats = set(dataset.meta.features)
    for key in sorted(set(ot_side.src_keys) | set(ot_side.tgt_keys)):
        base = key[: -len("_is_pad")] if key.endswith("_is_pad") else key
        if base not in feats:
            raise OtplugError(f"the OT config uses {key!r} but the dataset has no feature {base!r} "
                              f"(features: {', '.join(sorted(feats))})")


def train(cfg, accelerator=None) -> dict[str, Any]:
    """Run training (see the module docstring). Returns a small summary dict (main process)."""
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise OtplugError("otplug train needs accelerate: pip install 'otplug[lerobot]'") from exc
    import torch
    from accelerate.utils import DistributedType
    from lerobot.common.train_utils import (
        get_step_checkpoint_dir,
        load_training_batch_size,
        load_training_num_processes,
        load_training_state,
        save_checkpoint,
        should_save_checkpoint,
        update_last_checkpoint,
    )
    from lerobot.datasets import EpisodeAwareSampler, compute_sampler_state
    from lerobot.datasets.factory import make_train_eval_datasets
    from lerobot.optim.factory import make_optimizer_and_scheduler
    from lerobot.policies import make_policy, make_pre_post_processors
    from lerobot.utils.collate import lerobot_collate_fn
    from lerobot.utils.random_utils import set_seed
    from lerobot.utils.utils import has_method
    from tqdm import tqdm

    from otplug.sinks import make_sinks

    if cfg.is_reward_model_training:
        raise OtplugError("otplug train trains policies; use lerobot-train for reward models")
    if cfg.peft is not None:
        raise OtplugError("otplug train does not support --peft yet; use lerobot-train")
    if cfg.env is not None and cfg.env_eval_freq > 0:
        raise OtplugError("otplug train does not run simulation evaluation; set --env_eval_freq=0 and evaluate "
                          "checkpoints with lerobot-eval")
    if accelerator is None:
        accelerator = _make_accelerator(cfg)
    is_main = accelerator.is_main_process
    ot_cfg = cfg.ot
    if cfg.seed is not None:
        set_seed(cfg.seed, accelerator=accelerator)
    device = accelerator.device
    if cfg.cudnn_deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True

    try:
        if is_main:
            dataset, eval_dataset = make_train_eval_datasets(cfg)
        accelerator.wait_for_everyone()
        if not is_main:
            dataset, eval_dataset = make_train_eval_datasets(cfg)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise OtplugError(f"could not open the dataset {cfg.dataset.repo_id!r} (root {cfg.dataset.root}): {exc}") from exc

    source = None
    if ot_cfg.active:
        from otplug.lerobot.pair_dataset import make_source_dataset

        try:
            source = make_source_dataset(ot_cfg.source_repo_id, ot_cfg.source_root, like=dataset)
        except OtplugError:
            raise
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise OtplugError(f"could not open the source dataset {ot_cfg.source_repo_id!r} "
                              f"(root {ot_cfg.source_root}): {exc}") from exc

    policy = make_policy(cfg=cfg.policy, ds_meta=dataset.meta, rename_map=cfg.rename_map)
    accelerator.wait_for_everyone()

    processor_pretrained_path = cfg.policy.pretrained_path
    stats = dataset.meta.stats
    if source is not None and ot_cfg.combine_stats:
        stats = _combined_stats(dataset, source)
    processor_kwargs: dict[str, Any] = {}
    if (processor_pretrained_path and not cfg.resume) or not processor_pretrained_path:
        processor_kwargs["dataset_stats"] = stats
    if processor_pretrained_path is not None:
        pre_over = {
            "device_processor": {"device": device.type},
            "normalizer_processor": {"features": {**policy.config.input_features, **policy.config.output_features},
                                     "norm_map": policy.config.normalization_mapping},
            "rename_observations_processor": {"rename_map": cfg.rename_map},
        }
        post_over = {"unnormalizer_processor": {"features": policy.config.output_features,
                                                "norm_map": policy.config.normalization_mapping}}
        if not cfg.resume:
            pre_over["normalizer_processor"]["stats"] = stats
            post_over["unnormalizer_processor"]["stats"] = stats
        processor_kwargs["preprocessor_overrides"] = pre_over
        processor_kwargs["postprocessor_overrides"] = post_over
    preprocessor, postprocessor = make_pre_post_processors(
        policy_cfg=cfg.policy, pretrained_path=processor_pretrained_path,
        pretrained_revision=getattr(cfg.policy, "pretrained_revision", None), **processor_kwargs)

    optimizer, lr_scheduler = make_optimizer_and_scheduler(cfg, policy)
    step = 0
    if cfg.resume:
        step, optimizer, lr_scheduler = load_training_state(cfg.checkpoint_path, optimizer, lr_scheduler)

    if cfg.dataset.streaming:
        raise OtplugError("otplug train does not support streaming datasets yet")
    sampler = EpisodeAwareSampler(
        dataset.meta.episodes["dataset_from_index"], dataset.meta.episodes["dataset_to_index"],
        episode_indices_to_use=dataset.episodes, drop_n_last_frames=getattr(cfg.policy, "drop_n_last_frames", 0),
        shuffle=True, seed=cfg.seed if cfg.seed is not None else 0,
        absolute_to_relative_idx=dataset.absolute_to_relative_idx)
    if cfg.resume and step > 0:
        n_proc = load_training_num_processes(cfg.checkpoint_path) or accelerator.num_processes
        bs = load_training_batch_size(cfg.checkpoint_path) or cfg.batch_size
        sampler.load_state_dict(compute_sampler_state(step, len(sampler), bs, n_proc))
    collate_fn = lerobot_collate_fn if dataset.meta.has_language_columns else None
    workers = cfg.num_workers > 0
    dataloader = torch.utils.data.DataLoader(
        dataset, num_workers=cfg.num_workers, batch_size=cfg.batch_size, shuffle=False, sampler=sampler,
        pin_memory=device.type == "cuda", drop_last=False, collate_fn=collate_fn,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        persistent_workers=cfg.persistent_workers and workers,
        multiprocessing_context=cfg.dataloader_multiprocessing_context if workers else None)

    accelerator.wait_for_everyone()
    policy, optimizer, dataloader, lr_scheduler = accelerator.prepare(policy, optimizer, dataloader, lr_scheduler)

    ot_side = None
    if ot_cfg.active:
        ot_side = OTSide(cfg, dataset, source, policy, preprocessor, accelerator, step)
        _check_dataset_has(dataset, ot_side)

    def _dl_cycle():
        while True:
            yield from dataloader

    dl_iter = _dl_cycle()
    if cfg.resume and step > 0:
        # Creating the data iterator draws a base seed from the global RNG. The uninterrupted run drew it before
        # the checkpointed RNG state was taken, so draw it first and restore the RNG afterwards: the resumed run
        # then continues exactly like the uninterrupted one (tested).
        from lerobot.utils.constants import TRAINING_STATE_DIR
        from lerobot.utils.random_utils import load_rng_state

        primed = next(dl_iter)
        load_rng_state(Path(cfg.checkpoint_path) / TRAINING_STATE_DIR)
        dl_iter = itertools.chain([primed], dl_iter)
    policy.train()
    output_dir = Path(cfg.output_dir)
    log_every = ot_cfg.log_every or cfg.log_freq
    sinks = None
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        sink_opts = {"plan-heatmap": {"every": max(1, ot_cfg.plan_every)},
                     "tensorboard": {"plan_every": ot_cfg.plan_every}}
        names = list(ot_cfg.sinks)
        if ot_side is None or ot_side.loss is None:
            names = [n for n in names if n != "plan-heatmap"]
        sinks = make_sinks(output_dir, names, sink_opts)
        _write_run_info(output_dir, cfg, accelerator, dataset, source)

    window = Window()
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    progbar = tqdm(total=cfg.steps - step, desc="otplug train", unit="step", disable=not is_main, leave=True,
                   dynamic_ncols=True)
    unwrapped = accelerator.unwrap_model(policy, keep_fp32_wrapper=True)
    t_start = time.perf_counter()
    try:
        for _ in range(step, cfg.steps):
            t0 = time.perf_counter()
            batch = next(dl_iter)
            n_ot = 0
            single_pass = ot_side is not None and ot_side.layout == "single-pass"
            if single_pass:
                batch, n_ot = ot_side.build_single_pass(batch)
            batch = images_to_float(batch, dataset.meta.camera_keys)
            batch = preprocessor(batch)
            data_s = time.perf_counter() - t0

            t1 = time.perf_counter()
            policy.train()
            metrics: dict[str, float] = {}
            capture = ot_side.capture if (single_pass and ot_side.capture is not None) else None
            with accelerator.autocast():
                with capture if capture is not None else contextlib.nullcontext():
                    bc_loss, output_dict = policy.forward(batch)
                loss = bc_loss
                res = None
                if ot_side is not None and ot_side.loss is not None:
                    if single_pass:
                        res = ot_side.single_pass_loss(batch, n_ot)
                    else:
                        res = ot_side.separate_loss(batch, policy, device)
                    loss = bc_loss + ot_cfg.lambda_ot * res.loss
            accelerator.backward(loss)
            if capture is not None:
                capture.clear()
            if cfg.optimizer.grad_clip_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.optimizer.grad_clip_norm)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), float("inf"), error_if_nonfinite=False)
            optimizer.step()
            optimizer.zero_grad()
            if lr_scheduler is not None:
                lr_scheduler.step()
            if has_method(unwrapped, "update"):
                unwrapped.update()
            step += 1

            metrics["bc_loss"] = bc_loss.item()
            metrics["loss"] = loss.item()
            metrics["grad_norm"] = float(grad_norm)
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            metrics["update_s"] = time.perf_counter() - t1
            metrics["dataloading_s"] = data_s
            if output_dict:
                metrics.update({k: float(v) for k, v in output_dict.items() if isinstance(v, int | float)})
            if res is not None:
                metrics.update(res.metrics)
                metrics["lambda_ot"] = ot_cfg.lambda_ot
            if not _finite_everywhere(metrics["loss"], accelerator):
                raise OtplugError(f"training diverged at step {step}: loss = {metrics['loss']} on this process "
                                  f"(bc_loss {metrics['bc_loss']}, ot_loss {metrics.get('ot_loss')})")
            window.add(metrics)
            if not first:
                first = dict(metrics)
            last = dict(metrics)

            is_log = log_every > 0 and (step % log_every == 0 or step == cfg.steps)
            if is_log:
                reduced = reduce_metrics(window.means(), accelerator)
                if is_main:
                    sinks.log(step, reduced)
                    postfix = {k: f"{reduced[k]:.3g}" for k in ("bc_loss", "ot_loss", "ot_pi_sum") if k in reduced}
                    progbar.set_postfix(postfix, refresh=False)
                window.reset()
            if is_main and res is not None and sinks.wants_plan(step):
                sinks.log_plan(step, res.plan.float().cpu().numpy(), {"step": step})
            progbar.update(1)

            if cfg.save_checkpoint and should_save_checkpoint(step, cfg.save_freq, cfg.steps):
                if is_main:
                    ckpt = get_step_checkpoint_dir(output_dir, cfg.steps, step)
                    save_checkpoint(checkpoint_dir=ckpt, step=step, cfg=cfg, policy=accelerator.unwrap_model(policy),
                                    optimizer=optimizer, scheduler=lr_scheduler, preprocessor=preprocessor,
                                    postprocessor=postprocessor, num_processes=accelerator.num_processes,
                                    batch_size=cfg.batch_size)
                    update_last_checkpoint(ckpt)
                accelerator.wait_for_everyone()
    finally:
        progbar.close()
        if sinks is not None:
            sinks.close()

    elapsed = time.perf_counter() - t_start
    is_fsdp = accelerator.distributed_type == DistributedType.FSDP
    del is_fsdp
    accelerator.wait_for_everyone()
    summary = {"steps": step, "seconds": elapsed, "first": first, "last": last,
               "world_size": accelerator.num_processes, "output_dir": str(output_dir)}
    if is_main:
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    accelerator.end_training()
    return summary


def _write_run_info(output_dir: Path, cfg, accelerator, dataset, source) -> None:
    info = {
        "dataset": {"repo_id": cfg.dataset.repo_id, "root": str(cfg.dataset.root), "frames": dataset.num_frames,
                    "episodes": dataset.num_episodes},
        "policy": cfg.policy.type,
        "world_size": accelerator.num_processes,
        "ot": {k: getattr(cfg.ot, k) for k in ("enabled", "config", "lambda_ot", "layout", "batch_size", "scope",
                                                "source_repo_id", "source_root", "pair_info", "cotrain_only")},
    }
    if source is not None:
        info["source"] = {"frames": source.num_frames, "episodes": source.num_episodes}
    if cfg.ot.config and Path(cfg.ot.config).is_file():
        info["ot_config_text"] = Path(cfg.ot.config).read_text()
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2, default=str))
