"""The ``otplug`` command. Listing commands never import torch or POT.

Every :class:`~otplug.errors.OtplugError` is printed as a message (exit code 2); set ``OTPLUG_DEBUG=1``
to see tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence

from otplug.errors import OtplugError

# CLI spelling of each kind -> registry kind
LISTABLE = {
    "terms": "term",
    "reducers": "reducer",
    "solvers": "solver",
    "alignments": "alignment",
    "sinks": "sink",
    "encoders": "encoder",
}


def _provider(p) -> str:
    if p.dist:
        return f"{p.dist} {p.version or ''}".strip() + ("" if p.plugin == p.dist else f" [{p.plugin}]")
    return p.plugin


def _print_failures(registry) -> None:
    for failure in registry.failures:
        print(f"warning: {failure.line()}", file=sys.stderr)
    for kind, name, entries in registry.conflicts():
        providers = " and ".join(p.provider for p in entries)
        print(f"warning: {kind} {name!r} is registered by more than one plugin: {providers}", file=sys.stderr)


def _table(rows: list[tuple[str, str, str]], headers: tuple[str, str, str]) -> str:
    width = shutil.get_terminal_size((120, 24)).columns
    w0 = max([len(headers[0])] + [len(r[0]) for r in rows])
    w2 = max([len(headers[2])] + [len(r[2]) for r in rows])
    w1 = max(30, width - w0 - w2 - 4)
    lines = [f"{headers[0]:<{w0}}  {headers[1]:<{w1}}  {headers[2]}", f"{'-' * w0}  {'-' * w1}  {'-' * w2}"]
    for name, summary, provider in rows:
        wrapped = textwrap.wrap(summary, w1) or [""]
        lines.append(f"{name:<{w0}}  {wrapped[0]:<{w1}}  {provider}")
        lines += [f"{'':<{w0}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def _problem(record) -> str:
    """The OT problem a solver record declares; one that declares nothing is checked as kl-unbalanced."""
    return record.problem or "kl-unbalanced (undeclared)"


def cmd_list(kind_plural: str, as_json: bool) -> int:
    from otplug.plugins import get_registry

    registry = get_registry()
    kind = LISTABLE[kind_plural]
    comps = registry.components(kind)
    if as_json:
        out = [
            {
                "name": p.record.name,
                "kind": kind,
                "summary": p.record.summary,
                "plugin": p.dist or p.plugin,
                "entry_point": p.plugin,
                "version": p.version,
                "factory": p.record.factory if isinstance(p.record.factory, str) else repr(p.record.factory),
                **({"problem": _problem(p.record), "problem_declared": p.record.problem is not None}
                   if kind == "solver" else {}),
            }
            for p in comps
        ]
        print(json.dumps(out, indent=2))
    else:
        rows = [(p.record.name, (f"[{_problem(p.record)}] " if kind == "solver" else "") + p.record.summary,
                 _provider(p)) for p in comps]
        print(_table(rows, (kind, "summary" if kind != "solver" else "[problem] summary", "plugin")))
    _print_failures(registry)
    return 0


def cmd_plugins(as_json: bool) -> int:
    from otplug.plugins import get_registry

    registry = get_registry()
    infos = registry.plugins()
    if as_json:
        out = {
            "plugins": [
                {"name": i.name, "distribution": i.dist, "version": i.version, "entry_point": i.entry_point,
                 "hooks": list(i.hooks), "builtin": i.builtin}
                for i in infos
            ],
            "failures": [
                {"plugin": f.plugin, "distribution": f.dist, "entry_point": f.entry_point, "error": f.error}
                for f in registry.failures
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    rows = [(i.name, ", ".join(i.hooks), f"{i.dist or '-'} {i.version or ''}".strip()) for i in infos]
    print(_table(rows, ("plugin", "hooks", "distribution")))
    if registry.failures:
        print("\nfailed to load:")
        for f in registry.failures:
            print(f"  {f.line()}")
    for kind, name, entries in registry.conflicts():
        print(f"conflict: {kind} {name!r} is registered by {' and '.join(p.provider for p in entries)}")
    return 0


def cmd_check_config(path: str, quiet: bool, dataset: str | None = None, source: str | None = None,
                     rename_map: str | None = None, pair_info: str | None = None,
                     sources_file: str | None = None, target_pool: str | None = None) -> int:
    from otplug.config import describe_config, load_config

    cfg = load_config(path)
    lines: list[str] = []
    if any(x is not None for x in (dataset, source, pair_info, sources_file, target_pool)):
        if dataset is not None and (pair_info is not None or sources_file is not None or target_pool is not None):
            _require_lerobot("check-config --pair-info/--sources-file")  # opens the datasets
        from otplug.lerobot.preflight import check_data

        lines = check_data(cfg, path, dataset=dataset, source=source, rename_map=rename_map, pair_info=pair_info,
                           sources_file=sources_file, target_pool=target_pool)
    if not quiet:
        print(describe_config(cfg))
    for line in lines:
        print(line)
    others = ", ".join(x for x in (source or sources_file, target_pool) if x)
    checked = (f" against {dataset}" + (f" and {others}" if others else "")) if dataset else ""
    print(f"{path}: OK{checked}")
    return 0


def _require_lerobot(command: str) -> None:
    import importlib.util

    missing = [m for m in ("lerobot", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise OtplugError(
            f"`otplug {command}` needs {' and '.join(missing)}: pip install 'otplug[lerobot]' "
            "(lerobot 0.6 needs Python 3.12)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otplug",
        description="Optimal-Transport alignment losses for co-training LeRobot policies on sim + real data.",
    )
    from otplug import __version__

    parser.add_argument("--version", action="version", version=f"otplug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for plural in LISTABLE:
        p = sub.add_parser(f"list-{plural}", help=f"list registered {plural}")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("list", help="list registered components of one kind (list terms|solvers|...)")
    p.add_argument("kind", choices=sorted(LISTABLE))
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("plugins", help="installed plugins, their distributions, hooks and load failures")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("check-config", help="validate an OT config file (JSON, TOML or YAML)")
    p.add_argument("file")
    p.add_argument("-q", "--quiet", action="store_true", help="print only OK / the problems")
    p.add_argument("--dataset", metavar="ROOT", help="also check the keys against this (target) LeRobot dataset")
    p.add_argument("--source", metavar="ROOT", help="... and the source keys against this source dataset")
    p.add_argument("--source-rename-map", metavar="JSON", help="source name -> target name, as --ot.source_rename_map")
    p.add_argument("--pair-info", metavar="FILE", help="also check a pair_info.json (against --dataset and --source "
                   "when both are given)")
    p.add_argument("--sources-file", metavar="FILE", help="with --dataset: check every source of a sources file "
                   "(keys, rename map, pair_info), as --ot.sources_file")
    p.add_argument("--target-pool", metavar="FILE", help="with --dataset: check every dataset of a target pool file "
                   "(the target's observations, the keys the terms read on the target side; no action needed), as "
                   "--ot.target_pool")

    sub.add_parser("train", help="train a LeRobot policy with the OT loss (see `otplug train --help`)", add_help=False)
    sub.add_parser("pair", help="compute DTW pair_info between two LeRobot datasets", add_help=False)
    sub.add_parser("eval", help="closed-loop evaluation of a checkpoint on the reach benchmark", add_help=False)
    sub.add_parser("record", help="record expert demonstrations of the reach benchmark", add_help=False)
    sub.add_parser("study", help="train and evaluate co-training methods with seeds on the reach benchmark",
                   add_help=False)
    sub.add_parser("report", help="one self-contained HTML page about a run or study folder", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        # eval / record: the reach benchmark (otplug.bench); their own parsers too
        if argv and argv[0] in ("eval", "record", "study"):
            _require_lerobot(argv[0])
            if argv[0] == "eval":
                from otplug.bench.eval import main as eval_main

                return int(eval_main(argv[1:]) or 0)
            if argv[0] == "study":
                from otplug.bench.study import main as study_main

                return int(study_main(argv[1:]) or 0)
            from otplug.bench.record import main as record_main

            return int(record_main(argv[1:]) or 0)
        # report: its own parser; needs matplotlib, not lerobot
        if argv and argv[0] == "report":
            from otplug.report import main as report_main

            return int(report_main(argv[1:]) or 0)
        # train / pair own their argument parsing (they are heavy: torch + lerobot)
        if argv and argv[0] in ("train", "pair"):
            _require_lerobot(argv[0])
            if argv[0] == "train" and "--demo" in argv[1:] and not {"-h", "--help", "--help-all"} & set(argv[1:]):
                from otplug.demo.run import main as demo_main

                return int(demo_main(argv[1:]) or 0)
            if argv[0] == "train":
                from otplug.lerobot.train import main as train_main

                return int(train_main(argv[1:]) or 0)
            from otplug.lerobot.pair_cli import main as pair_main

            return int(pair_main(argv[1:]) or 0)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "list":
            return cmd_list(args.kind, args.json)
        if args.command.startswith("list-"):
            return cmd_list(args.command[len("list-"):], args.json)
        if args.command == "plugins":
            return cmd_plugins(args.json)
        if args.command == "check-config":
            return cmd_check_config(args.file, args.quiet, args.dataset, args.source, args.source_rename_map,
                                    args.pair_info, args.sources_file, args.target_pool)
    except OtplugError as exc:
        if os.environ.get("OTPLUG_DEBUG"):
            raise
        print(f"otplug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otplug: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # the last resort for a full disk at a write site that has no message of its own (a library writing for
        # us): one line, exit code 2, like every OtplugError; every other exception is a bug and keeps its traceback
        from otplug.atomic import disk_full, write_error

        if os.environ.get("OTPLUG_DEBUG") or not disk_full(exc):
            raise
        print(f"otplug: error: {write_error(getattr(exc, 'filename', None), exc)}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2
