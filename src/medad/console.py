"""What medad prints: results on stdout, warnings on stderr, progress bars only on a terminal.

``--quiet`` (:func:`set_quiet`) silences results and progress; warnings and errors are always printed.
Progress bars are drawn only when stderr is a terminal, so logs never collect ``\\r`` frames.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # tqdm takes a fifth of a second to import: ``medad --help`` does without it
    from tqdm import tqdm

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
    from tqdm.auto import tqdm

    stream = sys.stderr
    drawn = not _quiet and getattr(stream, "isatty", lambda: False)()
    return tqdm(iterable, file=stream, disable=not drawn, **options)
