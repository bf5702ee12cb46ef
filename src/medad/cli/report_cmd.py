"""``medad report``: one self-contained HTML page from benchmark results and/or run folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medad import console
from medad.cli.common import add_quiet_option
from medad.cli.errors import CliError
from medad.engine.run_folder import RunFolder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="HTML report (tables, ROC curves, score distributions, heat maps, support weights)",
        description="Write OUT/index.html (figures embedded, PNGs saved beside it) from benchmark result files "
                    "(benchmarks/results/*.json or their folder) and/or run folders of 'medad evaluate', "
                    "'medad fewshot evaluate' and 'medad demo'.")
    report.add_argument("inputs", nargs="+", metavar="RUN_OR_RESULTS",
                        help="run folders, benchmark result JSON files, or a folder of result files")
    report.add_argument("--out", required=True, help="folder for index.html and its PNGs")
    report.add_argument("--title", help="page title (default: 'medad report')")
    add_quiet_option(report)
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medad.report import build_report

    missing = [item for item in args.inputs if not Path(item).exists()]
    if missing:
        raise CliError(f"RUN_OR_RESULTS {', '.join(missing)}: no such file or folder; give run folders, benchmark "
                       "result files or folders of them")
    out = RunFolder(args.out)
    out.check_writable()
    with out.locked("report"):
        report = build_report(args.inputs, out.path, title=args.title)
    for note in report.notes:
        console.info(f"note: {note}")
    if not report.read:
        print(f"medad: error: none of the inputs could be read, so {report.path} only says so", file=sys.stderr)
        return 2
    console.info(f"report: {report.path} ({len(report.figures)} figures)")
    return 0
