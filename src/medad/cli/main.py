"""The ``medad`` command."""

from __future__ import annotations

import argparse
import os
import sys

from medad import __version__


def build_parser() -> argparse.ArgumentParser:
    from medad.cli import data_cmd, demo_cmd, fewshot_cmd, report_cmd, run_cmd

    parser = argparse.ArgumentParser(prog="medad", description="Anomaly detection in medical images by "
                                     "knowledge distillation (RD4AD, D²4FAD few-shot, PDD).")
    parser.add_argument("--version", action="version", version=f"medad {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    data_cmd.add_parser(subparsers)
    run_cmd.add_parsers(subparsers)
    fewshot_cmd.add_parser(subparsers)
    demo_cmd.add_parser(subparsers)
    report_cmd.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medad.backbones import MissingWeightsError
    from medad.data.io import ImageReadError
    from medad.data.tasks import TaskLayoutError
    from medad.engine.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (MissingWeightsError, CheckpointError, ImageReadError, TaskLayoutError, FileNotFoundError) as error:
        print(f"medad: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # bad settings or input (image size, K, teacher names, …)
        if os.environ.get("MEDAD_DEBUG"):
            raise
        print(f"medad: error: {error} (set MEDAD_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
