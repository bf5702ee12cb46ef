import pytest
import torch

from medad.backbones import build_teacher
from medad.checkpoints import CheckpointError, load_model, read_meta, save_model
from medad.features import FeatureCache, stack_features


def test_cache_computes_each_image_once_and_persists(tmp_path):
    teacher = build_teacher("efficientnet_lite0", weights=None)
    images = torch.rand(5, 3, 32, 32)
    cache = FeatureCache(teacher, tmp_path)
    first = stack_features(cache, images, batch_size=2)
    assert (cache.misses, cache.hits) == (5, 0)
    second = stack_features(cache, images, batch_size=3)
    assert cache.hits == 5 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    reference = teacher(images)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, reference, strict=True))
    fresh = FeatureCache(teacher, tmp_path)  # another process: reads the files
    stack_features(fresh, images)
    assert fresh.misses == 0 and fresh.hits == 5


def test_cache_is_invalidated_by_teacher_weights_and_image_size(tmp_path):
    images = torch.rand(2, 3, 32, 32)
    cache_a = FeatureCache(build_teacher("efficientnet_lite0", weights=None), tmp_path)
    stack_features(cache_a, images)
    torch.manual_seed(123)
    cache_b = FeatureCache(build_teacher("efficientnet_lite0", weights=None), tmp_path)
    assert cache_b.fingerprint != cache_a.fingerprint
    stack_features(cache_b, images)
    assert cache_b.misses == 2
    stack_features(cache_a, torch.nn.functional.interpolate(images, size=(64, 64)))
    assert cache_a.misses == 4


def test_checkpoint_roundtrip_and_damaged_or_foreign_files(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, {"w": torch.arange(4.0)}, {"method": "rd4ad", "teacher": "efficientnet_lite0"})
    state, meta = load_model(path, expected_method="rd4ad")
    assert torch.equal(state["w"], torch.arange(4.0)) and meta["teacher"] == "efficientnet_lite0"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind
    with pytest.raises(CheckpointError, match="not 'd24fad'"):
        load_model(path, expected_method="d24fad")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="damaged"):
        read_meta(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        read_meta(tmp_path / "absent.safetensors")


def test_saved_checkpoints_are_byte_identical_whatever_the_metadata_order(tmp_path):
    from safetensors.torch import load_file, save

    from medad.checkpoints import canonical_safetensors

    weights = {"b.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.ones(3, dtype=torch.float16)}
    metadata = {f"key{i}": f"value {i} ²" for i in range(8)}
    forward = save(weights, metadata=metadata)
    backward = save(weights, metadata=dict(reversed(metadata.items())))
    assert canonical_safetensors(forward) == canonical_safetensors(backward)
    canonical = canonical_safetensors(forward)
    assert int.from_bytes(canonical[:8], "little") % 8 == 0
    (tmp_path / "c.safetensors").write_bytes(canonical)
    loaded = load_file(str(tmp_path / "c.safetensors"))
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    save_model(tmp_path / "m1.safetensors", weights, {"method": "x"})
    save_model(tmp_path / "m2.safetensors", weights, {"method": "x"})
    assert (tmp_path / "m1.safetensors").read_bytes() == (tmp_path / "m2.safetensors").read_bytes()
