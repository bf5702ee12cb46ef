"""Fixtures of the break-it suite (helpers in ``breakit.py``)."""

from __future__ import annotations

import pytest
from breakit import Outcome, files_under


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    """``cli(*argv)`` → :class:`Outcome` of ``medad *argv`` run in ``tmp_path`` (argparse exits included)."""
    from medad.cli.main import main

    monkeypatch.chdir(tmp_path)

    def run(*argv) -> Outcome:
        capsys.readouterr()
        before = files_under(tmp_path)
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit_info:
            code = exit_info.code
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err, files_under(tmp_path) - before)
    return run
