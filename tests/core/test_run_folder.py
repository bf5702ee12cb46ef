"""The run folder's rules: one writer at a time, stale locks, the checkpoint pair, Ctrl-C held back while saving."""

import os
import shutil
import signal
import socket
import subprocess

import pytest
import torch

from medad.backbones import build_teacher
from medad.checkpoints import read_meta
from medad.engine.run_folder import LOCK_FILE, MODEL_FILE, RunFolder, RunFolderError, sigint_deferred
from medad.engine.training import TrainConfig
from medad.engine.unsupervised import train_unsupervised
from medad.models.rd4ad import RD4AD, RD4ADConfig


def _write_lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(f'{{"pid": {pid}, "host": "{socket.gethostname()}", "command": "train"}}')


def test_a_lock_held_by_a_live_process_refuses_a_second_writer(tmp_path):
    """Defect: two `medad train` runs into one folder both ran to the end and mixed their files."""
    holder = subprocess.Popen(["sleep", "30"])
    try:
        _write_lock(tmp_path / "run", holder.pid)
        with pytest.raises(RunFolderError, match=f"another medad run \\(PID {holder.pid}"):
            with RunFolder(tmp_path / "run").locked("train"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # the other run's lock is left alone


def test_a_stale_lock_is_replaced_with_a_warning_and_released(tmp_path, capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()
    _write_lock(tmp_path / "run", gone.pid)
    with RunFolder(tmp_path / "run").locked("train"):
        assert str(os.getpid()) in (tmp_path / "run" / LOCK_FILE).read_text()
    assert "stale lock" in capsys.readouterr().err and not (tmp_path / "run" / LOCK_FILE).exists()


def test_ctrl_c_while_saving_is_delivered_after_the_block():
    """Defect: Ctrl-C inside torch.save left the model at epoch N and the state at N − 1."""
    finished = []
    # Python's own Ctrl-C handler, whatever this process inherited (a job started in the background of a
    # non-interactive shell starts with SIGINT ignored, and then nothing would be delivered at all)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigint_deferred():
                signal.raise_signal(signal.SIGINT)
                finished.append(True)  # the save goes on to the end
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert finished == [True]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher("efficientnet_lite0", weights=None)


def test_a_model_file_behind_the_state_is_rewritten_and_resume_stays_exact(teacher, tmp_path, capsys):
    """Defect: a run killed between the two checkpoint writes resumed on weights of another epoch."""
    images = torch.rand(6, 3, 32, 32)
    torch.manual_seed(0)
    straight = RD4AD(teacher, RD4ADConfig(blocks_per_stage=1))
    initial = {key: value.clone() for key, value in straight.learnable_state_dict().items()}
    train_unsupervised(straight, images, TrainConfig(epochs=3, batch_size=4, seed=3))

    resumed = RD4AD(teacher, RD4ADConfig(blocks_per_stage=1))
    resumed.load_learnable_state_dict(initial)
    train_unsupervised(resumed, images, TrainConfig(epochs=1, batch_size=4, seed=3), out_dir=tmp_path)
    shutil.copy(tmp_path / MODEL_FILE, tmp_path / "epoch1.safetensors")
    train_unsupervised(resumed, images, TrainConfig(epochs=2, batch_size=4, seed=3), out_dir=tmp_path, resume=True)
    shutil.copy(tmp_path / "epoch1.safetensors", tmp_path / MODEL_FILE)  # killed after the state, before the model

    resumed.load_learnable_state_dict(initial)  # resume must not depend on what is in memory
    result = train_unsupervised(resumed, images, TrainConfig(epochs=3, batch_size=4, seed=3), out_dir=tmp_path,
                                resume=True)
    assert "behind the training state (epoch 1 vs 2)" in capsys.readouterr().err
    assert result.epochs_done == 3 and read_meta(tmp_path / MODEL_FILE)["epochs"] == 3
    for key, value in straight.learnable_state_dict().items():
        assert torch.allclose(value.float(), resumed.learnable_state_dict()[key].float(), atol=1e-6), key
