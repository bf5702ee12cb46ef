"""What medad prints: results on stdout, warnings on stderr, progress bars only on a terminal.

``--quiet`` (:func:`set_quiet`) silences results and progress; warnings and errors are always printed.
Progress bars are drawn only when stderr is a terminal, so logs never collect ``\\r`` frames; when it is
not (a log file, CI, nohup) progress is one plain line per epoch, and for other work one line every
:data:`LOG_EVERY_SECONDS` seconds (and one when work that printed one ends), so a long command is never silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # tqdm takes a fifth of a second to import: ``medad --help`` does without it
    from tqdm import tqdm

T = TypeVar("T")
_quiet = False
#: least seconds between two progress lines of work other than epochs when stderr is not a terminal
LOG_EVERY_SECONDS = 30.0


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


def progress(iterable: Iterable[T], **options: Any) -> tqdm | LineProgress:
    """``tqdm(iterable)`` on a terminal; :class:`LineProgress` when stderr is not one; nothing under ``--quiet``."""
    from tqdm.auto import tqdm

    stream = sys.stderr
    if not _quiet and not getattr(stream, "isatty", lambda: False)():
        return LineProgress(iterable, options.get("desc", "working"), options.get("unit", "it"),
                            options.get("total"), options.get("initial", 0))
    return tqdm(iterable, file=stream, disable=_quiet, **options)


class LineProgress:
    """Progress as plain lines on stderr (``medad: few-shot training: epoch 3/32 (loss 0.1234)``)."""

    def __init__(self, iterable: Iterable[T], desc: str, unit: str, total: int | None, initial: int = 0) -> None:
        self.iterable, self.desc, self.unit, self.initial = iterable, desc, unit, initial
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def __iter__(self) -> Iterator[T]:
        done, last, printed = self.initial, time.monotonic(), False
        for item in self.iterable:
            yield item
            done += 1
            finished = self.total is not None and done >= self.total
            if self.unit == "epoch" or (finished and printed) or time.monotonic() - last >= LOG_EVERY_SECONDS:
                self._line(done)
                last, printed = time.monotonic(), True

    def _line(self, done: int) -> None:
        if _quiet:
            return
        of = f"/{self.total}" if self.total is not None else ""
        extra = ", ".join(f"{key} {value}" for key, value in self.postfix.items())
        print(f"medad: {self.desc}: {self.unit} {done}{of}" + (f" ({extra})" if extra else ""), file=sys.stderr,
              flush=True)
