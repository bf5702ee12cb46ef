"""The device option, device-independent checkpoints and the feature bank (CPU here; one test needs CUDA)."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.serialization

from medad.backbones import build_teacher
from medad.cli.main import main
from medad.device import autocast_dtype, grad_scaler, resolve_device
from medad.checkpoints import MODEL_FILE, STATE_FILE, load_training_state, save_model
from medad.engine.evaluate import evaluate_images
from medad.engine.training import TrainConfig
from medad.engine.unsupervised import train_unsupervised
from medad.features import FeatureBank
from medad.models.factory import load_trained_model
from medad.models.rd4ad import RD4AD, RD4ADConfig


def test_auto_is_cuda_only_when_there_is_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_unusable_or_misspelt_devices_are_clear_errors(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="only 1 CUDA GPU"):
        resolve_device("cuda:3")


def test_cpu_runs_in_float32_without_loss_scaling():
    assert autocast_dtype(torch.device("cpu")) is None
    assert not grad_scaler(torch.device("cpu")).is_enabled()


def test_cli_device_option(tmp_path, phantom_head, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", str(phantom_head.root), "--out", str(out), "--epochs", "1",
                 "--image-size", "64", "--batch-size", "6", "--device", "cpu"]) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu (float32)"
    assert main(["evaluate", "--checkpoint", str(out), "--task", str(phantom_head.root), "--no-report",
                 "--device", "cpu"]) == 0
    assert json.loads((out / "metrics.json").read_text())["device"] == "cpu (float32)"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", str(out), str(phantom_head.root), "--out", str(tmp_path), "--device", "gpu"])
    assert exit_info.value.code == 2 and "invalid device 'gpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["predict", "--checkpoint", str(out), str(phantom_head.root), "--out", str(tmp_path),
                     "--device", "cuda"]) == 2
        assert "no usable CUDA GPU" in capsys.readouterr().err


def _save_as_if_on_cuda(monkeypatch, obj, path):
    """``torch.save`` that tags every tensor with the location ``cuda:0``, as a save on a GPU does."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CUDA-saved file on a machine without CUDA")
def test_a_run_trained_on_cuda_resumes_and_scores_on_the_cpu(tmp_path, phantom_head, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--task", str(phantom_head.root), "--out", str(out), "--image-size", "64", "--batch-size", "6"]
    assert main([*args, "--epochs", "1", "--device", "cpu"]) == 0
    _save_as_if_on_cuda(monkeypatch, torch.load(out / STATE_FILE, weights_only=True), out / STATE_FILE)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(out / STATE_FILE, weights_only=True)  # what a loader without map_location would meet
    assert load_training_state(out / STATE_FILE)["epochs_done"] == 1
    assert main([*args, "--epochs", "2", "--resume", "--device", "auto"]) == 0  # the device may change on resume
    assert json.loads((out / "train_log.json").read_text())["epochs"] == 2
    model, _ = load_trained_model(out, device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_checkpoints_saved_before_the_bottleneck_option_load_with_the_old_bottleneck(tmp_path):
    teacher = build_teacher("efficientnet_lite0", weights=None)
    old = RD4AD(teacher, RD4ADConfig(bottleneck="standard"))
    meta = old.meta()
    del meta["config"]["bottleneck"]  # what a checkpoint written before the option holds
    save_model(tmp_path / MODEL_FILE, old.learnable_state_dict(), {**meta, "image_size": 64})
    model, _ = load_trained_model(tmp_path, teacher_weights=None)
    assert model.config.bottleneck == "standard"
    assert RD4ADConfig().bottleneck == "lean"
    lean = sum(p.numel() for p in RD4AD(teacher).student.parameters())
    assert lean < sum(p.numel() for p in old.student.parameters())


def test_feature_bank_on_the_cpu_returns_the_indexed_rows():
    stages = [torch.rand(7, 4, 8, 8), torch.rand(7, 6, 4, 4)]
    bank = FeatureBank(stages, torch.device("cpu"))
    rows = torch.tensor([5, 0, 5])
    assert bank.on_device and len(bank) == 7
    assert all(torch.equal(got, stage[rows]) for got, stage in zip(bank[rows], stages, strict=True))


def _train_and_score(model, train, test, labels):
    train_unsupervised(model, train, TrainConfig(epochs=1, batch_size=4, lr=1e-3, seed=0))
    return evaluate_images(model.predict, test, labels, batch_size=4).scores


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_train_and_score_step_on_cuda_matches_the_cpu(tmp_path):
    from medad.device import to_device

    torch.manual_seed(0)
    teacher = build_teacher("efficientnet_lite0")
    cpu_model = RD4AD(teacher)
    cuda_model = to_device(copy.deepcopy(cpu_model), torch.device("cuda"))
    train, test = torch.rand(8, 3, 64, 64), torch.rand(6, 3, 64, 64)
    labels = [0, 0, 0, 1, 1, 1]
    cpu_scores = _train_and_score(cpu_model, train, test, labels)
    cuda_scores = _train_and_score(cuda_model, train, test, labels)
    assert {p.device.type for p in cuda_model.student.parameters()} == {"cuda"}
    np.testing.assert_allclose(cuda_scores, cpu_scores, rtol=0.05)  # mixed precision on CUDA: a few per cent
    save_model(tmp_path / MODEL_FILE, cuda_model.learnable_state_dict(), {**cuda_model.meta(), "image_size": 64})
    reloaded, _ = load_trained_model(tmp_path, device="cpu")
    np.testing.assert_allclose(evaluate_images(reloaded.predict, test, labels, batch_size=4).scores, cuda_scores,
                               rtol=0.05)
