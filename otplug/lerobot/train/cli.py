"""``otplug train`` command line: short flags, draccus parsing (lerobot's parser), resume, and ``main``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.error
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import draccus
import lerobot.policies  # noqa: F401 - registers the policy config choices (--policy.type)
from lerobot.configs import parser
from lerobot.utils.import_utils import register_third_party_plugins

from otplug.errors import OtplugError
from otplug.lerobot.datasets import quiet_lerobot
from otplug.lerobot.train.config import OTTrainConfig
from otplug.lerobot.train.loop import train
from otplug.lerobot.train.run_dir import complete_checkpoint
from otplug.lerobot.video_backend import default_backend

__all__ = ["HELP", "expand_short_flags", "main", "parse_config", "run"]

HELP = """usage: otplug train [--demo] [--steps N] [--output-dir DIR] [--ot-scope rank|global] [--resume]
                    [lerobot-train options ...] [--ot.OPTION=VALUE ...]

Train a LeRobot policy with bc_loss + lambda_ot * ot_loss. Every lerobot-train option works
(--dataset.repo_id, --dataset.root, --policy.type, --batch_size, --num_workers, --save_freq, --log_freq, ...).

short flags:
  --demo               train a small ACT policy on the reach benchmark's sim/real pair (offline, CPU)
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
  sink_options JSON    keyword options per sink, e.g. '{"csv": {"filename": "m.csv"}}' (plugin sinks too)
  plan_every N         plan heatmap every N steps (default 50)
  memory_format F      contiguous (default) or channels_last: with --policy.use_amp=true, the bf16 fast path
                       (the OT plan and loss stay float32; docs/training.md "Mixed precision")

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


def expand_short_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Turn ``--steps 5`` into ``--steps=5`` etc.; pull out ``--demo`` / ``--resume``."""
    out: list[str] = []
    opts: dict[str, Any] = {"demo": False, "resume": False, "no_baseline": False}
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
    return out, opts


def _json_lists(args: Sequence[str]) -> list[str]:
    """``--x=[a,b]`` -> ``--x=["a", "b"]``: draccus reads bracket lists of bare words on the command line, but
    when it merges them into a saved config (``--resume``) only JSON lists."""
    out = []
    for a in args:
        name, eq, val = a.partition("=")
        v = val.strip()
        if eq and name.startswith("--") and v.startswith("[") and v.endswith("]"):
            try:
                json.loads(v)
            except ValueError:
                items = [x.strip().strip("'\"") for x in v[1:-1].split(",") if x.strip()]
                a = f"{name}={json.dumps(items)}"
        out.append(a)
    return out


def _say_video_backend(cfg: Any, choice: Any, given: bool, from_file: bool) -> None:
    """One line about the video decoder (the main process only)."""
    backend = cfg.dataset.video_backend
    if given:
        why = "from --dataset.video_backend"
    elif from_file and backend != choice.backend:
        why = f"from the config file; otplug's default here would be {choice.backend}"
    elif from_file:
        why = "from the config file"
    else:
        why = choice.reason + "; --dataset.video_backend chooses another"
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"otplug train: video backend {backend} ({why})", flush=True)


def parse_config(cli_args: Sequence[str], *, resume: bool = False, output_dir: str | None = None):
    """Parse lerobot-train style arguments into an :class:`OTTrainConfig` and validate it."""
    register_third_party_plugins()
    args = list(cli_args)
    if resume:
        if not output_dir:
            output_dir = parser.parse_arg("output_dir", args)
        if not output_dir:
            raise OtplugError("--resume needs --output-dir DIR (the run to continue)")
        ckpt = complete_checkpoint(Path(output_dir))
        args = [a for a in args if not a.startswith("--output_dir")]
        args = _json_lists(args) + ["--resume=true", f"--config_path={ckpt / 'pretrained_model' / 'train_config.json'}"]
    if not resume and not any(a.startswith("--policy.push_to_hub") for a in args) and any(
            a.startswith(("--policy.type", "--policy.path")) for a in args):
        args.append("--policy.push_to_hub=false")  # offline by default; lerobot would demand a hub repo_id
    choice = default_backend()  # also the default of --dataset.video_backend (OTDatasetConfig)
    given = any(a.startswith("--dataset.video_backend") for a in args)
    from_file = resume or any(a.startswith("--config_path") for a in args)
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
            cfg.validate()  # lerobot's checks, then the ot section's (which parses the OT config file once)
            _say_video_backend(cfg, choice, given, from_file)
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
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(HELP)
        return 0
    if "--help-all" in argv:
        parser.print_scoped_help(OTTrainConfig, ["--help"])
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_lerobot()  # lerobot's torchcodec fallback notice is a traceback-looking block; we use pyav anyway
    args, opts = expand_short_flags(argv)
    if opts["demo"]:  # `otplug train --demo` is dispatched to otplug.demo by the top-level CLI
        raise OtplugError("--demo: run `otplug train --demo` (the demo builds on training, not the other way round)")
    cfg = parse_config(args, resume=opts["resume"], output_dir=opts.get("output_dir"))
    run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"otplug train: done; the run's page: otplug report {cfg.output_dir}")
    return 0


def run(cfg: Any, accelerator: Any = None, *, end_training: bool = True) -> dict[str, Any]:
    """:func:`~otplug.lerobot.train.loop.train` with a failed download turned into one clear message."""
    try:
        return train(cfg, accelerator, end_training=end_training)
    except OSError as exc:
        if not _is_network_error(exc):
            raise
        raise OtplugError(
            f"a download was attempted and failed ({exc}). otplug trains offline: pass "
            "--policy.pretrained_backbone_weights=null (ImageNet backbone weights come from the torchvision URL), "
            "give local datasets with --dataset.root / --ot.source_root, or pre-fill the torch/HF caches"
        ) from exc


def _is_network_error(exc: BaseException) -> bool:
    seen = exc
    while seen is not None:
        if isinstance(seen, urllib.error.URLError | ConnectionError | TimeoutError) or "offline" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False
