"""The ``medad`` command.  Exit codes: :mod:`medad.cli.errors` (and the README).

Ctrl-C ends every command with ``medad: interrupted`` and exit code 130: while the parser imports the
command modules (numpy, yaml, …) a SIGINT handler exits at once; once the command runs, Ctrl-C raises
``KeyboardInterrupt`` so that training can leave its files consistent.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

from medad import __version__, console
from medad.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED
from medad.cli.parser import MedadParser


def build_parser() -> MedadParser:
    from medad.cli import data_cmd, demo_cmd, export_cmd, fewshot_cmd, report_cmd, run_cmd, serve_cmd

    parser = MedadParser(prog="medad", description="Anomaly detection in medical images by "
                         "knowledge distillation (RD4AD, D²4FAD few-shot, PDD).")
    parser.add_argument("--version", action="version", version=f"medad {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    data_cmd.add_parser(subparsers)
    run_cmd.add_parsers(subparsers)
    fewshot_cmd.add_parser(subparsers)
    demo_cmd.add_parser(subparsers)
    report_cmd.add_parser(subparsers)
    export_cmd.add_parser(subparsers)
    serve_cmd.add_parser(subparsers)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (the data layer's, say) as one ``medad: warning:`` line."""
    console.warn(_one_line(message))


def _exit_interrupted(signum, frame) -> None:
    print("medad: interrupted", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    handles_signals = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _exit_interrupted) if handles_signals else None
    try:
        args = build_parser().parse_args(argv)
        return _run(args, handles_signals)
    finally:
        if handles_signals:
            signal.signal(signal.SIGINT, previous)


def _run(args, handles_signals: bool) -> int:
    """The command, with its errors as one line; from its first line Ctrl-C raises KeyboardInterrupt."""
    from medad.cli.errors import CliError
    from medad.data.io import ImageReadError, MissingDependencyError
    from medad.data.tasks import TaskLayoutError
    from medad.engine.run_folder import RunFolderError, TrainingInterrupted
    from medad.errors import CheckpointError, MissingWeightsError

    handled = (CliError, RunFolderError, MissingWeightsError, CheckpointError, ImageReadError, TaskLayoutError,
               MissingDependencyError, OSError)
    console.set_quiet(getattr(args, "quiet", False))
    try:
        if handles_signals:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except TrainingInterrupted as error:
        print(f"medad: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("medad: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except handled as error:
        print(f"medad: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as error:  # bad settings or input (K, teacher names, a diverging loss, …)
        if os.environ.get("MEDAD_DEBUG"):
            raise
        print(f"medad: error: {_one_line(error)} (set MEDAD_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        console.set_quiet(False)


if __name__ == "__main__":
    sys.exit(main())
