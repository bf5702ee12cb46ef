"""`medad train` never loses or mixes runs: refusals, --overwrite, --resume checks, failed runs, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import medad
from medad.cli.main import main
from medad.checkpoints import read_meta


def _train(task, out, *extra):
    return main(["train", "--task", str(task.root), "--out", str(out), "--image-size", "64", "--batch-size", "6",
                 "--quiet", *extra])


@pytest.fixture()
def two_epoch_run(tmp_path, phantom_head):
    out = tmp_path / "run"
    assert _train(phantom_head, out, "--epochs", "2") == 0
    return out


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(two_epoch_run, phantom_head, capsys):
    """Defect: `train --out DIR` over a finished run silently replaced it with a 1-epoch model and exited 0."""
    before = (two_epoch_run / "model.safetensors").read_bytes()
    assert _train(phantom_head, two_epoch_run, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("medad: error: --out") and "2 finished epochs" in err
    assert "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert (two_epoch_run / "model.safetensors").read_bytes() == before
    assert _train(phantom_head, two_epoch_run, "--epochs", "1", "--overwrite") == 0
    assert read_meta(two_epoch_run)["epochs"] == 1
    assert json.loads((two_epoch_run / "train_log.json").read_text())["epochs"] == 1


def test_resume_with_another_option_is_refused_and_config_is_untouched(two_epoch_run, phantom_head, capsys):
    """Defect: `--resume --image-size 96` on a 64-px run failed but rewrote config.json to 96."""
    config = (two_epoch_run / "config.json").read_text()
    assert _train(phantom_head, two_epoch_run, "--epochs", "3", "--resume", "--image-size", "96") == 2
    err = capsys.readouterr().err
    assert "--image-size 96 differs from the run's 64" in err
    assert (two_epoch_run / "config.json").read_text() == config
    assert main(["train", "--out", str(two_epoch_run), "--epochs", "3", "--resume", "--quiet"]) == 0  # options reused
    resumed = json.loads((two_epoch_run / "config.json").read_text())
    assert resumed["options"]["epochs"] == 3 and resumed["options"]["image_size"] == 64 and resumed["resumed"]


def test_resume_with_fewer_epochs_than_done_says_so(two_epoch_run, capsys):
    """Defect: `--resume --epochs 40` on a 50-epoch run did nothing and said nothing."""
    assert main(["train", "--out", str(two_epoch_run), "--epochs", "1", "--resume"]) == 2
    assert "--epochs 1 is fewer than the 2 epochs" in capsys.readouterr().err
    assert main(["train", "--out", str(two_epoch_run), "--epochs", "2", "--resume"]) == 0
    assert "already holds all 2 epochs; nothing to train" in capsys.readouterr().out


def test_runs_that_fail_at_once_leave_no_folder(tmp_path, phantom_head, capsys):
    """Defects: a bad image size or a NaN loss left a folder holding only config.json; the NaN loss was a
    FloatingPointError traceback and the image size message named no flag."""
    assert _train(phantom_head, tmp_path / "size", "--epochs", "1", "--image-size", "37") == 2
    err = capsys.readouterr().err
    assert "--image-size 37" in err and "multiple of its deepest stride 16" in err and err.count("\n") == 1
    assert not (tmp_path / "size").exists()
    assert _train(phantom_head, tmp_path / "nan", "--epochs", "1", "--lr", "1e30") == 2
    err = capsys.readouterr().err
    assert err.startswith("medad: error: the training loss became nan") and "lower the learning rate (--lr" in err
    assert "Traceback" not in err and not (tmp_path / "nan").exists()


@pytest.fixture()
def one_thread():
    """The interrupted run trains in a one-thread subprocess; runs compared with it bit for bit must too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_is_exact(tmp_path, phantom_head, capsys, one_thread):
    """Defects: Ctrl-C printed a traceback from inside torch.save, left model and state at different epochs,
    and resume re-ran an epoch; a second run into the same folder also ran."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "medad.cli.main", "train", "--task", str(phantom_head.root), "--out", str(out),
               "--image-size", "64", "--batch-size", "6", "--epochs", "1000"]
    env = {**os.environ, "PYTHONPATH": str(Path(medad.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "model.safetensors").is_file() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()[1]
        assert _train(phantom_head, out, "--epochs", "2", "--resume") == 2  # a second writer fails at once
        assert "another medad run (PID" in capsys.readouterr().err
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    done = int(torch.load(out / "training_state.pt", weights_only=True)["epochs_done"])
    assert child.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (f"medad: interrupted after epoch {done}; continue with `--resume` "
                                               f"({out} is consistent)")
    assert "Traceback" not in stderr and read_meta(out)["epochs"] == done and not (out / ".medad.lock").exists()

    target = done + 1
    assert main(["train", "--out", str(out), "--epochs", str(target), "--resume", "--quiet"]) == 0
    straight = tmp_path / "straight"
    assert _train(phantom_head, straight, "--epochs", str(target)) == 0
    resumed, reference = load_file(str(out / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    for key, value in reference.items():
        assert torch.allclose(value.float(), resumed[key].float(), atol=1e-5), key
    log = json.loads((out / "train_log.json").read_text())
    assert log["epochs"] == target and len(log["loss"]) == target
