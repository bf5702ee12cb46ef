import pytest
import torch

from medad.backbones import build_teacher
from medad.checkpoints import CheckpointError
from medad.engine.evaluate import evaluate_images
from medad.data.images import load_images
from medad.engine.training import TrainConfig
from medad.engine.unsupervised import train_unsupervised
from medad.models.rd4ad import RD4AD, RD4ADConfig
from medad.scoring import smooth_maps


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher("efficientnet_lite0", weights=None)


def test_separable_smoothing_equals_torchvision_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    maps = torch.rand(3, 40, 40)
    expected = gaussian_blur(maps.unsqueeze(1), [33, 33], [4.0, 4.0])[:, 0]
    assert torch.allclose(smooth_maps(maps, 4.0), expected, atol=1e-5)


def test_resume_continues_exactly_where_training_stopped(teacher, tmp_path):
    images = torch.rand(6, 3, 32, 32)
    straight = RD4AD(teacher, RD4ADConfig(blocks_per_stage=1))
    torch.manual_seed(1)
    resumed = RD4AD(teacher, RD4ADConfig(blocks_per_stage=1))
    resumed.load_learnable_state_dict(straight.learnable_state_dict())
    train_unsupervised(straight, images, TrainConfig(epochs=4, batch_size=4, seed=3))
    train_unsupervised(resumed, images, TrainConfig(epochs=2, batch_size=4, seed=3), out_dir=tmp_path)
    result = train_unsupervised(resumed, images, TrainConfig(epochs=4, batch_size=4, seed=3), out_dir=tmp_path,
                                resume=True)
    assert result.epochs_done == 4 and len(result.history) == 4
    for key, value in straight.learnable_state_dict().items():
        assert torch.allclose(value.float(), resumed.learnable_state_dict()[key].float(), atol=1e-6), key


def test_checkpoints_are_spaced_in_time_and_an_interrupt_reports_what_was_saved(teacher, tmp_path, monkeypatch):
    from medad.engine.run_folder import RunFolder, TrainingInterrupted

    saves = []
    original = RunFolder.save_checkpoint
    monkeypatch.setattr(RunFolder, "save_checkpoint", lambda self, w, meta, state: (saves.append(meta["epochs"]),
                                                                                    original(self, w, meta, state)))
    images = torch.rand(4, 3, 32, 32)
    model = RD4AD(teacher, RD4ADConfig(blocks_per_stage=1))
    train_unsupervised(model, images, TrainConfig(epochs=3, batch_size=4, checkpoint_seconds=3600), out_dir=tmp_path)
    assert saves == [3]  # only the last epoch within the interval
    train_unsupervised(model, images, TrainConfig(epochs=2, batch_size=4, checkpoint_seconds=0), out_dir=tmp_path / "b")
    assert saves == [3, 1, 2]  # 0: after every epoch

    calls = []

    def interrupted_loss(features):
        calls.append(1)
        if len(calls) == 3:  # after an epoch had finished, before the first checkpoint was due
            raise KeyboardInterrupt
        return RD4AD.loss(model, features)

    monkeypatch.setattr(model, "loss", interrupted_loss)
    with pytest.raises(TrainingInterrupted) as error:
        train_unsupervised(model, images, TrainConfig(epochs=4, batch_size=4, checkpoint_seconds=3600),
                           out_dir=tmp_path / "c")
    assert error.value.epochs_done == 0 and "nothing was saved" in str(error.value)


def test_resume_refuses_a_run_of_another_image_size(teacher, tmp_path):
    model = RD4AD(teacher, RD4ADConfig(blocks_per_stage=1))
    train_unsupervised(model, torch.rand(4, 3, 32, 32), TrainConfig(epochs=1, batch_size=4), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="32 px"):
        train_unsupervised(model, torch.rand(4, 3, 64, 64), TrainConfig(epochs=2, batch_size=4), out_dir=tmp_path,
                           resume=True)


def test_cached_and_uncached_training_give_the_same_model(teacher):
    images = torch.rand(5, 3, 32, 32)
    models = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        model = RD4AD(teacher, RD4ADConfig(blocks_per_stage=1))
        train_unsupervised(model, images, TrainConfig(epochs=2, batch_size=2, seed=0, use_cache=use_cache))
        models.append(model.learnable_state_dict())
    for key in models[0]:
        assert torch.allclose(models[0][key].float(), models[1][key].float(), atol=1e-4), key


def test_training_reduces_loss_and_every_test_image_is_scored(phantom_head):
    teacher = build_teacher("efficientnet_lite0")
    model = RD4AD(teacher)
    train, _ = load_images(phantom_head.train, 64)
    result = train_unsupervised(model, train, TrainConfig(epochs=6, batch_size=5, seed=0))
    assert result.history[-1] < result.history[0]
    test, masks = load_images(phantom_head.test, 64)
    evaluation = evaluate_images(model.predict, test, [s.label for s in phantom_head.test], masks, batch_size=5)
    assert len(evaluation.scores) == len(phantom_head.test)  # 12 images in batches of 5: last batch kept
    assert evaluation.metrics["n_test_abnormal"] == 6 and evaluation.metrics["pixel_auroc"] is not None


def test_nan_input_is_a_clear_error(teacher):
    model = RD4AD(teacher).eval()
    images = torch.rand(2, 3, 32, 32)
    images[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.predict(images)
    with pytest.raises(ValueError, match="empty"):
        train_unsupervised(model, torch.rand(0, 3, 32, 32), TrainConfig(epochs=1))
