import pytest
import torch
import torch.nn.functional as F

from medad.backbones import MissingWeightsError, build_teacher
from medad.backbones.efficientnet_lite import build_classifier


def test_lite0_imagenet_mapping_recognises_a_cat():
    """The weight mapping is right, not just loadable: a real cat photo → ImageNet cat class (281–285)."""
    data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    photo = F.interpolate(photo, size=(224, 224), mode="bilinear", antialias=True)
    classifier = build_classifier("efficientnet_lite0")
    with torch.no_grad():
        top1 = classifier((photo - 0.5) / 0.5).argmax(dim=1).item()
    assert 281 <= top1 <= 285


@pytest.mark.parametrize("name,channels", [("efficientnet_lite0", [24, 40, 112]), ("resnet18", [64, 128, 256]),
                                           ("wide_resnet50_2", [256, 512, 1024])])
def test_feature_info_matches_outputs(name, channels):
    teacher = build_teacher(name, weights=None)
    features = teacher(torch.rand(2, 3, 64, 64))
    assert [stage.channels for stage in teacher.feature_info] == channels
    for stage, feature in zip(teacher.feature_info, features):
        assert feature.shape == (2, stage.channels, 64 // stage.stride, 64 // stage.stride)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = build_teacher("efficientnet_lite0", weights=None)
    teacher.train()
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_image_size_not_divisible_by_stride_is_a_clear_error():
    teacher = build_teacher("efficientnet_lite0", weights=None)
    with pytest.raises(ValueError, match="multiple of 16"):
        teacher(torch.rand(1, 3, 100, 100))


def test_missing_torchvision_weights_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_OFFLINE", "1")
    monkeypatch.setenv("MEDAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="wide_resnet50_2-95faca4d.pth"):
        build_teacher("wide_resnet50_2")


def test_torchvision_weights_load_from_the_offline_directory(tmp_path, monkeypatch):
    source = build_teacher("resnet18", weights=None)
    import torchvision

    network = torchvision.models.resnet18(weights=None)
    torch.save(network.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    monkeypatch.setenv("MEDAD_OFFLINE", "1")
    monkeypatch.setenv("MEDAD_WEIGHTS_DIR", str(tmp_path))
    teacher = build_teacher("resnet18")
    assert torch.equal(teacher.stem[0].weight, network.conv1.weight)
    assert not torch.equal(teacher.stem[0].weight, source.stem[0].weight)


def test_unknown_teacher_lists_the_available_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_teacher("resnet999")
