"""The break-it suite's helpers: how a command ended, and whether it ended cleanly.

A clean failure: exit code 2, exactly one stderr line ``medad: error: …`` naming the flag or file, no
traceback, and nothing written outside ``--out`` (every command runs with the test's folder as its working
directory, so a stray relative write is seen too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from medad.checkpoints import MODEL_FILE


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    written: set[Path] = field(default_factory=set)

    def written_outside(self, *allowed: Path) -> list[Path]:
        return sorted(path for path in self.written
                      if not any(path == folder or folder in path.parents for folder in allowed))


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def assert_clean_error(outcome: Outcome, *named: str, out: Path | None = None) -> None:
    """Exit 2, one ``medad: error:`` line naming every string of ``named``, no traceback, nothing written
    outside ``out`` (nothing at all when None)."""
    assert outcome.code == 2, (outcome.code, outcome.err)
    assert outcome.err.count("\n") == 1 and outcome.err.startswith("medad: error: "), outcome.err
    assert "Traceback" not in outcome.err
    for text in named:
        assert text in outcome.err, (text, outcome.err)
    allowed = [out] if out is not None else []
    assert outcome.written_outside(*allowed) == [], outcome.written


def rewrite_checkpoint(source: Path, target: Path, *, edit=None, keep_header: bool = True) -> Path:
    """A copy of a checkpoint whose weights went through ``edit(state)``; its header (digests included) is kept
    as it was (an edit on disk) unless ``keep_header`` is False (then the file is saved anew, as a run that
    diverged would save it)."""
    from medad.checkpoints import save_model

    source = source / MODEL_FILE if source.is_dir() else source
    state = load_file(str(source))
    if edit is not None:
        edit(state)
    with safe_open(str(source), framework="pt") as handle:
        header = handle.metadata()
    if keep_header:
        save_file(state, str(target), metadata=header)
    else:
        save_model(target, state, json.loads(header["medad"]))
    return target
