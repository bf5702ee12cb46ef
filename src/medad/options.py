"""Numeric options, checked in one place: command-line flags, YAML configs, recorded runs and the web form.

Every numeric option has a :class:`Number` rule in :data:`NUMBERS` (integer or real, finite, its range).
:func:`number_type` is the argparse ``type`` of a flag (argparse names the flag in the message),
:func:`check_numbers` checks the values of a resolved option dict (from a config file, say) and names
the flag itself, and :func:`parse_threshold` reads a threshold ('auto', 'none' or a finite number)
for the CLI and the web form alike.  No torch here: the parser is built without it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class OptionError(ValueError):
    """A numeric option outside its rule; the message names the option and the rule."""


@dataclass(frozen=True)
class Number:
    """What a numeric option accepts: an integer or a finite real number, within [minimum, maximum]."""

    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    #: the minimum itself is refused (e.g. a learning rate > 0)
    exclusive: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        low = None if self.minimum is None else f"{'>' if self.exclusive else '≥'} {self.minimum:g}"
        high = None if self.maximum is None else f"≤ {self.maximum:g}"
        return " ".join([kind, " and ".join(part for part in (low, high) if part)]).strip()

    def check(self, value: Any, name: str) -> int | float:
        """``value`` (a number or its text) when it keeps the rule; else an :class:`OptionError` naming ``name``."""
        number = _as_number(value, self.integer)
        if number is None or (self.minimum is not None and (number < self.minimum or
                                                            (self.exclusive and number == self.minimum))) \
                or (self.maximum is not None and number > self.maximum):
            raise OptionError(f"{name} must be {self.describe()}, got {value!r}")
        return number


def _as_number(value: Any, integer: bool) -> int | float | None:
    """An int (``integer``) or finite float from a number or its text; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip()) if integer else float(value.strip())
        except ValueError:
            return None
    if integer:
        return value if isinstance(value, int) else None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


POSITIVE_INT = Number(integer=True, minimum=1)
NON_NEGATIVE_INT = Number(integer=True, minimum=0)
POSITIVE = Number(minimum=0, exclusive=True)
FINITE = Number()
PERCENTILE = Number(minimum=0, maximum=100, exclusive=True)
PORT = Number(integer=True, minimum=0, maximum=65535)

#: every numeric option of the commands, by its key (the long flag with '_' for '-')
NUMBERS: dict[str, Number] = {
    "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT, "lr": POSITIVE, "image_size": POSITIVE_INT,
    "seed": NON_NEGATIVE_INT, "k": POSITIVE_INT, "draws": POSITIVE_INT, "max_queries_per_task": POSITIVE_INT,
    "threshold": FINITE, "threshold_percentile": PERCENTILE, "port": PORT, "max_file_mb": POSITIVE,
    "max_references": POSITIVE_INT, "max_queries": POSITIVE_INT,
}


def flag_of(key: str) -> str:
    return "--" + key.replace("_", "-")


def number_type(key: str) -> Callable[[str], int | float]:
    """The argparse ``type`` of the flag of ``key`` (argparse prefixes the message with the flag)."""
    rule = NUMBERS[key]

    def parse(text: str) -> int | float:
        try:
            return rule.check(text, "the value")
        except OptionError:
            raise argparse.ArgumentTypeError(f"expected {rule.describe()}, got {text!r}") from None

    return parse


def check_numbers(options: Mapping[str, Any]) -> None:
    """Check every numeric option of a resolved option dict (None: unset); lists (``k``) element by element."""
    for key, value in options.items():
        if key not in NUMBERS or value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            NUMBERS[key].check(item, flag_of(key))


def parse_threshold(text: str, keywords: tuple[str, ...] = ("auto", "none")) -> str | float:
    """A threshold: one of ``keywords`` or a finite number (NaN and infinities are refused)."""
    text = text.strip()
    if text in keywords:
        return text
    number = _as_number(text, integer=False)
    if number is None:
        raise OptionError(f"expected {', '.join(repr(k) for k in keywords)} or a finite number, got {text!r}")
    return number
