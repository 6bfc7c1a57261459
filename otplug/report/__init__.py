"""``otplug report FOLDER``: one self-contained HTML page about a training run or a study.

A run folder (``metrics.jsonl``, ``run_info.json``, ...) gets: the run's datasets and OT options, its final
metrics, training curves (BC/OT loss, plan mass, source share), the alignment diagnostics over training
(``diag/*``, ``ot_embed_scale/*``, ``ot_cost_share/*``), transport plans spread over training (``plans/``), PCA and
t-SNE pictures of the probe embeddings at the first and last saved step (``embeddings/step_*.npz``), and the DTW
warping paths of a few episode pairs (the run's ``pair_info``). What a run did not record is said so in its
section. A study folder (``study.json``) gets, at the level of the training seed (SPEC §8.1): the split, scenes and
training seeds (a warning for one seed), success per seed with its t interval (Wilson as episode noise), the paired
comparisons against co-training with their power, the sim − real gaps and the gap closed, which offline signal
predicts real success, ``study.png``, ``study.md``, the per-method embedding pictures and a table of its runs, each
linked to its own page (``runs/<method>/seed<k>/report.html``). Every picture is embedded as a ``data:`` URI: the page is one file
with no external assets. See docs/report.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "build_report", "main"]


def build_report(*args, **kwargs):
    """See :func:`otplug.report.build.build_report`."""
    from otplug.report.build import build_report as _build

    return _build(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otplug report", description="One self-contained HTML page about a training run or a study folder "
                                "(docs/report.md).",
                                epilog="A missing folder, or one that is neither a run nor a study, exits with code 2.")
    p.add_argument("folder", metavar="RUN_OR_STUDY_DIR", help="a run folder (otplug train --output_dir) or a study "
                   "folder (otplug study --output-dir)")
    p.add_argument("--out", metavar="FILE.html", help="where to write the page (default: FOLDER/report.html)")
    p.add_argument("--no-tsne", action="store_true", help="PCA only (t-SNE takes a few seconds per picture)")
    p.add_argument("--max-plans", type=int, default=6, metavar="N", help="transport plans shown (default 6)")
    p.add_argument("--no-run-pages", action="store_true", help="study: do not write a page per run")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from otplug.errors import OtplugError

    if args.max_plans < 1:
        raise OtplugError(f"--max-plans must be >= 1, got {args.max_plans}")
    out = build_report(args.folder, args.out, tsne=not args.no_tsne, run_pages=not args.no_run_pages,
                       max_plans=args.max_plans, quiet=args.quiet)
    print(out)
    return 0
