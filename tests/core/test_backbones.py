import pytest
import torch
import torch.nn.functional as F

from medad.backbones import MissingWeightsError, available_teachers, build_teacher
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


@pytest.mark.parametrize("num_stages", [3, 4])
@pytest.mark.parametrize("name", available_teachers())
def test_feature_info_matches_the_outputs_of_every_registered_teacher(name, num_stages):
    teacher = build_teacher(name, weights=None, num_stages=num_stages)
    features = teacher(torch.rand(2, 3, 64, 64))
    assert [stage.stride for stage in teacher.feature_info] == [4, 8, 16, 32][:num_stages]
    assert len(features) == len(teacher.feature_info) == num_stages
    for stage, feature in zip(teacher.feature_info, features, strict=True):
        assert feature.shape == (2, stage.channels, 64 // stage.stride, 64 // stage.stride)


@pytest.mark.parametrize("name,channels", [("efficientnet_lite0", [24, 40, 112]), ("resnet18", [64, 128, 256]),
                                           ("wide_resnet50_2", [256, 512, 1024]), ("vmamba_tiny", [96, 192, 384])])
def test_teachers_return_the_papers_channels(name, channels):
    assert [stage.channels for stage in build_teacher(name, weights=None).feature_info] == channels


def test_torchvision_checkpoints_give_torchvision_features(tmp_path):
    """A torchvision checkpoint loads strictly into timm's ResNet, which then computes torchvision's layers."""
    import torchvision

    network = torchvision.models.resnet18(weights=None).eval()
    torch.save(network.state_dict(), tmp_path / "resnet18.pth")
    teacher = build_teacher("resnet18", weights=tmp_path / "resnet18.pth", num_stages=4)
    images = torch.rand(2, 3, 64, 64)
    x = network.maxpool(network.relu(network.bn1(network.conv1(teacher.normalise(images)))))
    expected = []
    for layer in (network.layer1, network.layer2, network.layer3, network.layer4):
        x = layer(x)
        expected.append(x)
    with torch.no_grad():
        for feature, reference in zip(teacher(images), expected, strict=True):
            torch.testing.assert_close(feature, reference)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match="teacher resnet34 do not fit .*Missing key"):
        build_teacher("resnet34", weights=tmp_path / "resnet18.pth")


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
    loaded = teacher.body.model.conv1.weight
    assert torch.equal(loaded, network.conv1.weight)
    assert not torch.equal(loaded, source.body.model.conv1.weight)


def test_unknown_teacher_lists_the_available_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_teacher("resnet999")
