"""The CLI's exit codes and its error type (documented in the README)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1  # `medad data check` found unreadable files
EXIT_ERROR = 2  # a handled error: one line `medad: error: …` naming the flag or file and the fix
EXIT_INTERRUPTED = 130  # Ctrl-C; training files are left consistent


class CliError(Exception):
    """A bad flag, input or folder; the message names it and says what to do."""
