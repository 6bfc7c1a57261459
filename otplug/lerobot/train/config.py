"""The ``otplug train`` config: lerobot's :class:`TrainPipelineConfig` plus an ``ot`` section.

Every ``lerobot-train`` option works unchanged (``--dataset.repo_id``, ``--policy.type``, ``--batch_size``,
``--steps``, ...). The OT options live under ``--ot.*``; see :class:`OTSection`. The section validates itself
(:meth:`OTSection.validate`, every message naming ``--ot.<field>``) and parses the OT config file once: the parsed
:class:`otplug.OTConfig` travels as ``cfg.ot.loss_config`` to everything that needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lerobot.configs.default import DatasetConfig
from lerobot.configs.train import TrainPipelineConfig

from otplug import validators as v
from otplug.errors import OtplugError
from otplug.lerobot.frame_cache import FRAME_CACHE_MODES
from otplug.lerobot.pair_dataset import SAMPLING_MODES
from otplug.lerobot.sources import check_specs, read_sources_file, single_source
from otplug.lerobot.train.ot_step import LAYOUTS as LAYOUT_STRATEGIES
from otplug.validators import check_option

__all__ = ["LAYOUTS", "SCOPES", "OTSection", "OTTrainConfig"]

#: ``--ot.layout``: the names of the layout strategies (:data:`otplug.lerobot.train.ot_step.LAYOUTS`)
LAYOUTS = tuple(LAYOUT_STRATEGIES)
SCOPES = ("rank", "global")


@dataclass
class OTSection:
    # Turn the OT loss on/off. Off (or lambda_ot = 0) means plain lerobot-train: no OT batch is loaded.
    enabled: bool = True
    # OT config file (TOML / YAML / JSON, native or seed format; `otplug check-config FILE`).
    config: str | None = None
    # total = bc_loss + lambda_ot * ot_loss
    lambda_ot: float = 0.1
    # The source (sim) LeRobot dataset; the BC dataset (--dataset.*) is the target (real) side.
    source_repo_id: str | None = None
    source_root: str | None = None
    # Source feature name -> target feature name (lerobot's rename_map shape), applied when the source dataset is
    # opened, e.g. '{"observation.images.cam_high": "observation.images.top"}'.
    source_rename_map: dict[str, str] = field(default_factory=dict)
    # Several source datasets (each with its root, pair_info, weight and rename map): a JSON/TOML/YAML file, see
    # otplug.lerobot.sources. Replaces the four --ot.source_* / --ot.pair_info options above.
    sources_file: str | None = None
    # BC co-training mixture: expected share of BC rows drawn from the source dataset (0 = target only). Works with
    # OT on or off (--ot.enabled=false --ot.bc_source_weight=0.5 is plain sim+real co-training).
    bc_source_weight: float = 0.0
    # Per-frame weight w/N per dataset (the seed's normalize_bc_weights_by_ds_size), so bc_source_weight is the
    # share whatever the dataset sizes; false: every frame of a dataset weighs its dataset's weight.
    bc_normalize_by_size: bool = True
    # DTW pairings between target and source episodes (`otplug pair ... --out pair_info.json`).
    pair_info: str | None = None
    # Real frames the OT loss sees and the BC loss never does (camera + state logs, no `action` needed): a
    # JSON/TOML/YAML file of [[pool]] datasets (root, weight, rename_map, pairing none|dtw), see otplug.lerobot.pool.
    target_pool: str | None = None
    # Share of each OT batch's target rows drawn from the target pool (the rest are the DTW-paired real rows).
    pool_share: float = 0.5
    # single-pass: the BC batch is [src | tgt | bc] rows and OT embeddings are captured from the BC forward
    # (recommended); separate: an OT dataloader beside the BC dataloader, encoded in extra forward passes.
    layout: str = "single-pass"
    # OT pairs (src/tgt rows) per step and process.
    batch_size: int = 8
    # Worker processes of the OT pair loader (default: none on machines with <= 4 cores, else num_workers // 2).
    num_workers: int | None = None
    # rank: each process solves OT on its own pairs; global: the plan covers the pairs of all processes.
    scope: str = "rank"
    # Cross-dataloader alignment policy (separate layout): `otplug list-alignments`.
    alignment: str = "rank"
    # Pair sampling (see otplug.lerobot.pair_dataset.PairSampling).
    # source-episode weight: logistic (ot-sim2real) | exp (earlier implementation) | uniform
    weighting: str = "logistic"
    sharpness: float | None = None
    cutoff: float | None = None
    top_k: int | None = None
    window_size: int | None = None
    no_window: bool = False
    # Normalise with statistics aggregated over target + source (lerobot's aggregate_stats).
    combine_stats: bool = True
    # single-pass keys whose embedding cannot be captured: "encode" (extra forward on those rows, with a
    # warning and the metric ot_capture_fallback) or "error".
    capture_fallback: str = "encode"
    # Ablation: load the pairs as BC rows (single-pass layout) but add no OT loss.
    cotrain_only: bool = False
    # Metric sinks besides metrics.jsonl (always on): console, tensorboard, wandb, plan-heatmap, ...
    sinks: list[str] = field(default_factory=lambda: ["console", "plan-heatmap"])
    # Keyword options for sinks, as a JSON object {sink name: {option: value}}, e.g.
    # '{"csv": {"filename": "m.csv"}}' -- the way to configure a plugin's sink; given for a built-in sink, they
    # replace its defaults below (plan-heatmap: every = plan_every; tensorboard: plan_every).
    sink_options: dict[str, Any] = field(default_factory=dict)
    # Transport-plan pictures every N steps (plan-heatmap sink).
    plan_every: int = 50
    # Log metrics every N steps (defaults to --log_freq).
    log_every: int | None = None
    # Alignment diagnostics (diag/* metrics, embeddings/step_*.npz for `otplug report`) every N steps on a fixed
    # probe set of DTW pairs (rounded up to a multiple of the log interval); 0 = off.
    diag_every: int = 100
    # A step whose loss or gradient is not finite: "stop" (default; nothing from it is applied or saved) or "skip"
    # (its gradients are dropped; the metric skipped_steps counts it).
    on_nonfinite: str = "stop"
    # Decode once (otplug.lerobot.frame_cache): hold the rows of the target and source datasets in memory, decoded
    # by lerobot once, and serve every batch from there (bit for bit the batches of the disk path). auto: each
    # dataset whose estimate fits frame_cache_max_gib; memory: every dataset; disk: read from disk as lerobot-train
    # does.
    frame_cache: str = "auto"
    frame_cache_max_gib: float = 4.0
    # A folder that keeps the decoded rows between runs (one file per dataset, under a fingerprint of its files and
    # options): a resumed run, another seed or another cell of a study loads them instead of decoding. Off if unset.
    frame_cache_dir: str | None = None
    # The optimizer's torch implementation: "lerobot" builds lerobot's optimizer as lerobot-train does (bit-exact
    # parity; torch's per-parameter loop on a CPU); "foreach" / "fused" pass foreach=True / fused=True to it (the
    # same update up to rounding, ~7x faster on a CPU for AdamW; docs/training.md).
    optimizer_impl: str = "lerobot"
    # The memory format of the policy's conv weights: "contiguous" (lerobot-train's) or "channels_last". With
    # --policy.use_amp (bf16 autocast) on a CPU with AVX512-BF16, channels_last is the fast path of the ResNet
    # backbone (docs/training.md, "Mixed precision"); alone in float32 it is slower on a CPU.
    memory_format: str = "contiguous"

    @property
    def active(self) -> bool:
        """Pairs are loaded (OT loss on, or the co-training ablation)."""
        return bool(self.enabled) and (self.lambda_ot > 0 or self.cotrain_only)

    @property
    def needs_source(self) -> bool:
        """The source dataset is opened (pairs, or source rows in the BC mixture)."""
        return self.active or self.bc_source_weight > 0

    @property
    def has_loss(self) -> bool:
        """An OT loss is added to the BC loss."""
        return self.active and not self.cotrain_only

    @property
    def sources(self) -> list[Any]:
        """The source datasets (:class:`otplug.lerobot.sources.SourceSpec`), from ``--ot.sources_file`` or the
        ``--ot.source_*`` options; empty when no source is opened. Set by :meth:`validate`."""
        return list(self.__dict__.get("_sources", []))

    @property
    def pool(self) -> list[Any]:
        """The target pool's datasets (:class:`otplug.lerobot.pool.PoolSpec`) from ``--ot.target_pool``; empty without
        one. Set by :meth:`validate`."""
        return list(self.__dict__.get("_pool", []))

    @property
    def sink_options_map(self) -> dict[str, dict[str, Any]]:
        """``--ot.sink_options`` parsed (sink name -> keyword options); set by :meth:`validate`."""
        return dict(self.__dict__.get("_sink_options") or parse_sink_options(self.sink_options, self.sinks))

    @property
    def loss_config(self) -> Any:
        """The parsed OT config (:class:`otplug.OTConfig`), or None without an OT loss; set by :meth:`validate`."""
        return self.__dict__.get("_loss_config")

    def validate(self, dataset_root: str | Path | None = None) -> None:
        """Check every rule of the section and parse the OT config file (once); :class:`OtplugError` names the
        option at fault."""
        _choice("layout", self.layout, LAYOUTS)
        _choice("scope", self.scope, SCOPES, alias="--ot-scope")
        _choice("capture_fallback", self.capture_fallback, CAPTURE_FALLBACKS)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        _choice("frame_cache", self.frame_cache, FRAME_CACHE_MODES)
        _choice("optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        _choice("memory_format", self.memory_format, MEMORY_FORMATS)
        _number("frame_cache_max_gib", self.frame_cache_max_gib, minimum=0.0)
        if self.frame_cache_dir is not None:
            if self.frame_cache == "disk":
                raise OtplugError("--ot.frame_cache_dir keeps decoded rows, but --ot.frame_cache=disk decodes none; "
                                  "drop one of the two")
            store = Path(self.frame_cache_dir).expanduser()
            if store.exists() and not store.is_dir():
                raise OtplugError(f"--ot.frame_cache_dir: {store} exists and is not a folder")
        _number("lambda_ot", self.lambda_ot, minimum=0.0)
        _integer("batch_size", self.batch_size, minimum=1)
        _integer("plan_every", self.plan_every, minimum=1)
        _integer("diag_every", self.diag_every, minimum=0)
        if self.log_every is not None:
            _integer("log_every", self.log_every, minimum=1)
        for name in ("sharpness", "cutoff"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), minimum=0.0 if name == "sharpness" else None)
        if self.top_k is not None:
            _integer("top_k", self.top_k, minimum=1)
        if self.window_size is not None:
            _integer("window_size", self.window_size, minimum=0)
        # the expected share of source rows in BC batches
        check_option("--ot.bc_source_weight", self.bc_source_weight, v.in_range(0.0, 1.0))
        if self.num_workers is not None:
            _integer("num_workers", self.num_workers, minimum=0)
        check_option("--ot.source_rename_map", self.source_rename_map, v.rename_map)
        if not isinstance(self.sinks, list) or not all(isinstance(n, str) and n for n in self.sinks):
            raise OtplugError(f"--ot.sinks must be a list of sink names like '[console,plan-heatmap]', got {self.sinks!r}")
        self.__dict__["_sink_options"] = parse_sink_options(self.sink_options, self.sinks)
        self.__dict__["_loss_config"] = None
        self.__dict__["_sources"] = []
        if self.sources_file is not None:
            self._read_sources_file()
        elif not self.active and self.needs_source and not self.source_repo_id:
            raise OtplugError("--ot.bc_source_weight > 0 needs the source dataset: set --ot.source_repo_id "
                              "(and --ot.source_root), or --ot.sources_file")
        if self.source_root and not Path(self.source_root).expanduser().is_dir():
            raise OtplugError(f"--ot.source_root: no such directory {self.source_root}")
        if self.sources_file is None and self.needs_source and self.source_repo_id:
            self.__dict__["_sources"] = [single_source(self.source_repo_id, self.source_root, self.pair_info,
                                                       self.source_rename_map)]
        if not self.active:
            return
        if self.cotrain_only and self.layout != "single-pass":
            raise OtplugError("--ot.cotrain_only needs --ot.layout=single-pass (the pairs become BC rows)")
        missing = [] if self.sources_file else [f"--ot.{n}" for n in ("source_repo_id", "pair_info")
                                                if not getattr(self, n)]
        if self.has_loss and not self.config:
            missing.append("--ot.config")
        if missing:
            raise OtplugError(f"OT is enabled but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set "
                              "(or disable it with --ot.enabled=false)")
        if self.sources_file:
            check_specs(self.sources, needs_pairs=True, flag=f"--ot.sources_file {self.sources_file}")
        elif not Path(self.pair_info).expanduser().is_file():
            raise OtplugError(f"--ot.pair_info: no such file {self.pair_info}")
        if dataset_root and not Path(dataset_root).expanduser().is_dir():
            raise OtplugError(f"--dataset.root: no such directory {dataset_root}")
        if self.has_loss:
            from otplug.config import load_config

            # parsed once, before datasets and the policy are built; everything downstream takes this object
            self.__dict__["_loss_config"] = load_config(self.config)
            self._check_scope_with_ema()
        self._read_pool()

    def _read_pool(self) -> None:
        """``--ot.target_pool`` and ``--ot.pool_share``: the pool file read and checked, with the rules that depend
        on the run (an OT loss to see the pool, the rank scope, a share that leaves rows of both kinds)."""
        self.__dict__["_pool"] = []
        if self.target_pool is None:
            return
        if not self.has_loss:
            raise OtplugError("--ot.target_pool: pool frames only enter the OT loss, and this run has none (OT "
                              "disabled, lambda_ot = 0 or --ot.cotrain_only); drop the pool or turn the loss on")
        if not isinstance(self.target_pool, str) or not self.target_pool.strip():
            raise OtplugError(f"--ot.target_pool must be a file path, got {self.target_pool!r}")
        if self.scope == "global":
            raise OtplugError("--ot.target_pool works with --ot.scope=rank only (the global plan cannot mark which "
                              "gathered rows are pool rows yet)")
        check_option("--ot.pool_share", self.pool_share, v.in_range(0.0, 1.0, low_open=True, high_open=True))
        from otplug.lerobot.pool import pool_rows, read_pool_file

        n = pool_rows(self.batch_size, self.pool_share)
        if not 1 <= n <= self.batch_size - 1:
            raise OtplugError(f"--ot.pool_share={self.pool_share} of --ot.batch_size={self.batch_size} gives {n} pool "
                              f"row(s) and {self.batch_size - n} paired row(s) per step; each must be at least 1 "
                              "(raise --ot.batch_size or move the share)")
        specs = read_pool_file(self.target_pool)
        if any(s.pairing == "dtw" for s in specs) and len(self.sources) > 1:
            raise OtplugError("--ot.target_pool: pairing = 'dtw' pairs a pool dataset with one source; this run has "
                              f"{len(self.sources)} (use pairing = 'none', or one source)")
        self.__dict__["_pool"] = specs

    def _check_scope_with_ema(self) -> None:
        """An EMA target encoder (a term with ``stopgrad_encoder = 'ema'``) is a copy of this process's policy:
        its features exist per process, so the global scope (one plan over every process's pairs) cannot use
        it. Refused here, with the two fields, before any data is opened."""
        if self.scope != "global":
            return
        import otplug

        names = otplug.OTLoss(self.loss_config).ema_encoder_terms
        if names:
            raise v.OptionError(
                f"--ot.scope=global cannot be used with an EMA target encoder: term(s) {', '.join(map(repr, names))} "
                f"of --ot.config {self.config} set stopgrad_encoder = 'ema', whose features exist per process; use "
                "--ot.scope=rank, or stopgrad_encoder = 'policy'")

    def _read_sources_file(self) -> None:
        given = [f"--ot.{n}" for n in ("source_repo_id", "source_root", "pair_info", "source_rename_map")
                 if getattr(self, n)]
        if given:
            raise OtplugError(f"--ot.sources_file lists the source datasets; drop {', '.join(given)} (or drop the "
                              "file and give the one source with those options)")
        if not isinstance(self.sources_file, str) or not self.sources_file.strip():
            raise OtplugError(f"--ot.sources_file must be a file path, got {self.sources_file!r}")
        self.__dict__["_sources"] = read_sources_file(self.sources_file)


CAPTURE_FALLBACKS = ("encode", "error")
ON_NONFINITE = ("stop", "skip")
OPTIMIZER_IMPLS = ("lerobot", "foreach", "fused")
MEMORY_FORMATS = ("contiguous", "channels_last")
WEIGHTINGS = SAMPLING_MODES  # --ot.weighting is PairSampling.mode


def parse_sink_options(text: str | dict | None, sinks: list[str]) -> dict[str, dict[str, Any]]:
    """``--ot.sink_options``: a JSON object mapping sink names (each in ``--ot.sinks`` or ``jsonl``) to objects of
    keyword options; one error naming the option and the sink otherwise."""
    if text is None or text == "" or text == {}:
        return {}
    if isinstance(text, dict):  # parsed by the command line (draccus) or read back from train_config.json
        data: Any = text
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OtplugError("--ot.sink_options must be a JSON object like "
                              f"'{{\"csv\": {{\"filename\": \"m.csv\"}}}}': "
                              f"{exc.msg} at column {exc.colno} (got {text!r})") from None
    if not isinstance(data, dict):
        raise OtplugError(f"--ot.sink_options must be a JSON object {{sink name: {{option: value}}}}, got "
                          f"{type(data).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for name, opts in data.items():
        if name not in sinks and name != "jsonl":
            raise OtplugError(f"--ot.sink_options gives options for sink {name!r}, which is not in --ot.sinks "
                              f"({', '.join(sinks) or 'none'}); add it there")
        if not isinstance(opts, dict):
            raise OtplugError(f"--ot.sink_options[{name!r}] must be an object of keyword options, got "
                              f"{type(opts).__name__}")
        out[name] = dict(opts)
    return out


def _choice(name: str, value: Any, choices: tuple[str, ...], alias: str | None = None) -> None:
    check_option(f"--ot.{name}" + (f" / {alias}" if alias else ""), value, v.one_of(*choices))


def _number(name: str, value: Any, *, minimum: float | None = None) -> None:
    check_option(f"--ot.{name}", value, v.finite if minimum is None else v.at_least(minimum))


def _integer(name: str, value: Any, *, minimum: int) -> None:
    check_option(f"--ot.{name}", value, v.at_least(minimum, integer=True))


def _quiet_video_backend() -> str:
    from otplug.lerobot.video_backend import default_backend

    return default_backend().backend


@dataclass
class OTDatasetConfig(DatasetConfig):
    """lerobot's dataset options, with one change: the default ``video_backend`` comes from otplug's quiet probe
    (:mod:`otplug.lerobot.video_backend`), not lerobot's, which draccus calls for every parse and which logs the
    whole torchcodec load failure when FFmpeg is missing. ``--dataset.video_backend`` still wins."""

    video_backend: str = field(default_factory=_quiet_video_backend)


@dataclass
class OTTrainConfig(TrainPipelineConfig):
    dataset: OTDatasetConfig
    ot: OTSection = field(default_factory=OTSection)

    def validate(self) -> None:
        super().validate()
        self.ot.validate(dataset_root=self.dataset.root if self.dataset is not None else None)
