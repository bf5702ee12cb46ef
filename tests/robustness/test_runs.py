"""Training runs under stress: --overwrite with a new run that fails, logs that are not a terminal, Ctrl-C early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import medad


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, phantom_head):
    from medad.cli.main import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--task", str(phantom_head.root), "--out", str(out), "--epochs", "1", "--image-size", "64",
                 "--batch-size", "6", "--quiet"]) == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_overwrite_keeps_the_old_run_when_the_new_one_fails(cli, finished_run, phantom_head, tmp_path):
    """Row: the finished run was deleted before the new one saved anything, leaving an empty folder."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    outcome = cli("train", "--task", phantom_head.root, "--out", run, "--epochs", "1", "--image-size", "64",
                  "--batch-size", "6", "--lr", "1e30", "--overwrite")
    assert outcome.code == 2 and "the training loss became nan" in outcome.err and "Traceback" not in outcome.err
    assert "the run it was replacing is back as it was" in outcome.err
    assert _snapshot(run) == before


def test_overwrite_replaces_the_old_run_once_the_new_one_has_saved(cli, finished_run, phantom_head, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "metrics.json").write_text("{}")  # an evaluation of the old run: replaced with it
    outcome = cli("train", "--task", phantom_head.root, "--out", run, "--epochs", "2", "--image-size", "64",
                  "--batch-size", "6", "--overwrite", "--quiet")
    assert outcome.code == 0, outcome.err
    names = {path.name for path in run.iterdir()}
    assert "metrics.json" not in names and ".medad-replaced" not in names and "model.safetensors" in names


def test_a_run_killed_while_replacing_is_put_back_by_the_next_command(cli, finished_run, phantom_head, tmp_path):
    """After a kill -9 between moving the old run aside and the first save, the next claim restores it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    aside = run / ".medad-replaced"
    aside.mkdir()
    for entry in list(run.iterdir()):
        if entry != aside:
            entry.rename(aside / entry.name)
    (run / "config.json").write_text("{}")  # what the killed new run had written
    outcome = cli("train", "--task", phantom_head.root, "--out", run, "--epochs", "1", "--resume", "--quiet")
    assert outcome.code == 0, outcome.err
    assert _snapshot(run) == before


def test_training_prints_one_line_per_epoch_when_stderr_is_not_a_terminal(cli, phantom_head, tmp_path):
    """Row: nothing at all was printed for 30 minutes of training into a log file."""
    outcome = cli("train", "--task", phantom_head.root, "--out", tmp_path / "run", "--epochs", "2",
                  "--image-size", "64", "--batch-size", "6")
    assert outcome.code == 0, outcome.err
    lines = [line for line in outcome.err.splitlines() if ": epoch " in line]
    assert len(lines) == 2 and lines[0].startswith("medad: rd4ad on ") and ": epoch 1/2 (loss " in lines[0]
    assert "\r" not in outcome.err


def test_quiet_prints_no_progress_lines(cli, phantom_head, tmp_path):
    outcome = cli("train", "--task", phantom_head.root, "--out", tmp_path / "run", "--epochs", "1",
                  "--image-size", "64", "--batch-size", "6", "--quiet")
    assert outcome.code == 0 and outcome.err == ""


def test_ctrl_c_while_the_command_is_still_importing_ends_cleanly(tmp_path):
    """Row: a KeyboardInterrupt traceback when Ctrl-C came before the command's modules were imported."""
    script = ("import os, signal, sys\n"
              "import medad.cli.main as cli\n"
              "build = cli.build_parser\n"
              "def interrupted_build():\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    return build()\n"
              "cli.build_parser = interrupted_build\n"
              "sys.exit(cli.main(['--help']))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(medad.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "medad: interrupted\n" and done.stdout == ""
    assert list(tmp_path.iterdir()) == []
