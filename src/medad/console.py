"""What medad prints: results on stdout, warnings on stderr, progress bars only on a terminal.

``--quiet`` (:func:`set_quiet`) silences results and progress; warnings and errors are always printed.
Progress bars are drawn only when stderr is a terminal, so logs never collect ``\\r`` frames.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) results and progress bars for the rest of the process."""
    global _quiet
    _quiet = bool(quiet)


def info(message: str) -> None:
    """A result line on stdout (silent under ``--quiet``)."""
    if not _quiet:
        print(message, flush=True)


def warn(message: str) -> None:
    """A one-line warning on stderr, always shown."""
    print(f"medad: warning: {message}", file=sys.stderr, flush=True)


def progress(iterable: Iterable[T], **options: Any) -> tqdm:
    """``tqdm(iterable)``, drawn only on a terminal and never under ``--quiet`` (disabled bars print nothing)."""
    stream = sys.stderr
    drawn = not _quiet and getattr(stream, "isatty", lambda: False)()
    return tqdm(iterable, file=stream, disable=not drawn, **options)
