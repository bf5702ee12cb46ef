"""argparse with medad's conventions: one-line errors (``medad: error: …``, exit 2) and defaults in the help."""

from __future__ import annotations

import argparse
from typing import NoReturn

from medad.cli.errors import EXIT_ERROR


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help when it has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings:
            return text
        if action.default is None or isinstance(action.default, bool) or action.default is argparse.SUPPRESS:
            return text
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else "%(default)s"
        return f"{text} (default: {shown})"


class MedadParser(argparse.ArgumentParser):
    """The parser of ``medad`` and (through ``add_subparsers``) of all its commands."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"medad: error: {message} (see `{self.prog} --help`)\n")
