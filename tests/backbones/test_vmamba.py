"""VMamba-Tiny (v0) teacher: shapes, gradients, selective scan, checkpoint layout, errors, CPU speed.

All with random weights: the official checkpoint cannot be obtained offline.
"""

from __future__ import annotations

import logging

import pytest
import torch

from medad.backbones.base import FeatureStage, MissingWeightsError
from medad.backbones.selective_scan import selective_scan, selective_scan_reference
from medad.backbones.vmamba import (
    CHECKPOINT_NAME,
    CHECKPOINT_URL,
    SS2D,
    WEIGHTS_ENV,
    PatchMerging2D,
    VMambaTiny,
    build_vmamba_tiny,
    default_weights_path,
)

EXPECTED_INFO = [FeatureStage(96, 4), FeatureStage(192, 8), FeatureStage(384, 16), FeatureStage(768, 32)]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: on the shared 2-core machine, 2 OpenMP threads competing with other jobs
    made these tests 3–5× slower (each of the scan's ~3000 small per-position ops waits for both)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> VMambaTiny:
    torch.manual_seed(0)
    return VMambaTiny()  # random weights, frozen


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No checkpoint anywhere: empty HOME, no environment variable."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return tmp_path


# --------------------------------------------------------------------------- shapes


def test_interface(model):
    assert model.name == "vmamba_tiny"
    assert model.feature_info == EXPECTED_INFO
    assert model.max_stride == 32
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(model.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert not any(parameter.requires_grad for parameter in model.parameters())
    assert not model.training


@pytest.mark.parametrize("size", [64, 128])
def test_feature_shapes_and_strides(model, size):
    batch = 2 if size == 64 else 1
    images = torch.rand(batch, 3, size, size)
    with torch.no_grad():
        features = model(images)
    assert len(features) == 4
    for feature, stage in zip(features, EXPECTED_INFO, strict=True):
        assert feature.shape == (batch, stage.channels, size // stage.stride, size // stage.stride)
        assert feature.is_contiguous()
        assert torch.isfinite(feature).all()


def test_non_square_input(model):
    with torch.no_grad():
        features = model(torch.rand(1, 3, 32, 96))
    assert [tuple(f.shape[-2:]) for f in features] == [(8, 24), (4, 12), (2, 6), (1, 3)]


def test_three_stage_registry_teacher():
    from medad.backbones.registry import build_teacher

    teacher = build_teacher("vmamba_tiny", weights=None, num_stages=3)
    assert teacher.feature_info == EXPECTED_INFO[:3]
    with torch.no_grad():
        features = teacher(torch.rand(1, 3, 48, 48))  # divisible by 16 (deepest of 3 stages), not 32
    assert [f.shape[1] for f in features] == [96, 192, 384]


def test_image_size_not_divisible_by_32(model):
    with pytest.raises(ValueError, match=r"not divisible by teacher vmamba_tiny's deepest stride 32"):
        model(torch.rand(1, 3, 100, 128))


# --------------------------------------------------------------------------- gradients


def test_gradients_flow_when_not_frozen():
    torch.manual_seed(1)
    network = VMambaTiny(freeze=False)
    assert all(parameter.requires_grad for parameter in network.parameters())
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    features = network(images)
    sum(feature.pow(2).mean() for feature in features).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    first_ssm = network.layers[0].blocks[0].self_attention
    for parameter in (first_ssm.A_logs, first_ssm.x_proj_weight, first_ssm.dt_projs_weight, first_ssm.Ds,
                      network.patch_embed.proj.weight, network.layers[3].blocks[1].self_attention.out_proj.weight):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


def test_frozen_teacher_still_passes_gradient_to_input(model):
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    model(images)[1].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.parameters())


# --------------------------------------------------------------------------- selective scan


def _random_scan_inputs(batch=2, groups=4, per_group=5, d_state=3, length=37, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels = groups * per_group
    return dict(
        u=torch.randn(batch, channels, length, generator=generator),
        delta=torch.randn(batch, channels, length, generator=generator),
        A=-torch.exp(torch.randn(channels, d_state, generator=generator)),
        B=torch.randn(batch, groups, d_state, length, generator=generator),
        C=torch.randn(batch, groups, d_state, length, generator=generator),
        D=torch.randn(channels, generator=generator),
        delta_bias=torch.randn(channels, generator=generator),
    )


@pytest.mark.parametrize("chunk_size", [None, 1, 8, 16, 64])
def test_fast_scan_equals_naive_loop(chunk_size):
    inputs = _random_scan_inputs()
    expected = selective_scan_reference(**inputs)
    with torch.no_grad():
        fast = selective_scan(**inputs, chunk_size=chunk_size)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    # the differentiable path gives the same values
    torch.testing.assert_close(selective_scan(**inputs, chunk_size=chunk_size), expected, rtol=1e-5, atol=1e-5)


def test_fast_scan_equals_naive_loop_long_sequence_model_sizes():
    # stage-1 sizes at 128 px (L = 32·32), fewer channels; strong decays included
    inputs = _random_scan_inputs(batch=1, groups=4, per_group=8, d_state=16, length=1024, seed=3)
    inputs["delta"] = inputs["delta"] * 3
    expected = selective_scan_reference(**inputs)
    with torch.no_grad():
        fast = selective_scan(**inputs)
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-4)


def test_fast_scan_gradients_equal_naive_loop():
    inputs = _random_scan_inputs(length=20, seed=5)
    leaves = {key: value.clone().requires_grad_(True) for key, value in inputs.items()}
    weights = torch.randn(2, 20, 20)
    (selective_scan(**leaves, chunk_size=8) * weights).sum().backward()
    fast_grads = {key: value.grad.clone() for key, value in leaves.items()}
    for value in leaves.values():
        value.grad = None
    (selective_scan_reference(**leaves) * weights).sum().backward()
    for key, value in leaves.items():
        torch.testing.assert_close(fast_grads[key], value.grad, rtol=1e-4, atol=1e-4, msg=key)


def test_scan_without_d_and_bias_and_softplus():
    inputs = _random_scan_inputs(seed=7)
    inputs.update(D=None, delta_bias=None, delta=inputs["delta"].abs())
    expected = selective_scan_reference(**inputs, delta_softplus=False)
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=False, chunk_size=10), expected)


def _official_layout_scan(ss2d: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D's scan written the way the v0 paper code lays it out: (b, k, d, l) tensors, grouped B/C."""
    b, d, h, w = x.shape
    length = h * w
    hw_and_wh = torch.stack([x.reshape(b, d, length), torch.transpose(x, 2, 3).reshape(b, d, length)], dim=1)
    xs = torch.cat([hw_and_wh, torch.flip(hw_and_wh, dims=[-1])], dim=1)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, ss2d.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [ss2d.dt_rank, ss2d.d_state, ss2d.d_state], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, ss2d.dt_projs_weight)
    out = selective_scan_reference(xs.reshape(b, -1, length), dts.reshape(b, -1, length), -torch.exp(ss2d.A_logs),
                                   Bs, Cs, ss2d.Ds, ss2d.dt_projs_bias.reshape(-1)).view(b, 4, d, length)
    inverse = torch.flip(out[:, 2:4], dims=[-1])
    wh = torch.transpose(out[:, 1].reshape(b, d, w, h), 2, 3).reshape(b, d, length)
    inverse_wh = torch.transpose(inverse[:, 1].reshape(b, d, w, h), 2, 3).reshape(b, d, length)
    return (out[:, 0] + inverse[:, 0] + wh + inverse_wh).view(b, d, h, w)


def test_ss2d_scan_equals_official_layout():
    torch.manual_seed(2)
    ss2d = SS2D(d_model=8)
    with torch.no_grad():
        for parameter in (ss2d.x_proj_weight, ss2d.dt_projs_weight, ss2d.A_logs, ss2d.Ds, ss2d.dt_projs_bias):
            parameter.add_(0.3 * torch.randn_like(parameter))  # break the per-direction symmetry of the init
        x = torch.randn(2, ss2d.d_inner, 5, 7)
        torch.testing.assert_close(ss2d.scan(x), _official_layout_scan(ss2d, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", range(4))
def test_each_scan_direction_is_causal_in_its_order(direction):
    """With only one direction's C and D left, output pixel p depends on input q iff q comes first in that order."""
    torch.manual_seed(3)
    height, width = 3, 4
    ss2d = SS2D(d_model=4)
    with torch.no_grad():
        for k in range(4):
            if k != direction:
                ss2d.x_proj_weight[k, ss2d.dt_rank + ss2d.d_state:] = 0  # C = 0: no output from direction k
                ss2d.Ds[k * ss2d.d_inner:(k + 1) * ss2d.d_inner] = 0
    x = torch.randn(1, ss2d.d_inner, height, width, requires_grad=True)
    y = ss2d.scan(x)

    def position(row, col):  # index of a pixel in this direction's scan order
        index = row * width + col if direction in (0, 2) else col * height + row
        return index if direction in (0, 1) else height * width - 1 - index

    for row in range(height):
        for col in range(width):
            (grad,) = torch.autograd.grad(y[0, :, row, col].sum(), x, retain_graph=True)
            depends = grad[0].abs().sum(0) > 0
            expected = torch.tensor([[position(r, c) <= position(row, col) for c in range(width)]
                                     for r in range(height)])
            assert torch.equal(depends, expected), (row, col)


def test_patch_merging_gather_order():
    merging = PatchMerging2D(dim=2)
    seen = {}
    merging.norm.register_forward_hook(lambda module, args, output: seen.setdefault("input", args[0]))
    x = torch.arange(1 * 4 * 4 * 2, dtype=torch.float32).view(1, 4, 4, 2)
    out = merging(x)
    assert out.shape == (1, 2, 2, 4)
    # (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1) of the top-left 2×2 window
    torch.testing.assert_close(seen["input"][0, 0, 0], torch.cat([x[0, 0, 0], x[0, 1, 0], x[0, 0, 1], x[0, 1, 1]]))


# --------------------------------------------------------------------------- checkpoint layout


def _official_style_checkpoint(model: VMambaTiny) -> dict:
    state_dict = dict(model.state_dict())
    state_dict["head.weight"] = torch.randn(1000, 768)  # the classifier the backbone ignores
    state_dict["head.bias"] = torch.randn(1000)
    return {"model": state_dict, "epoch": 292, "max_accuracy": 82.2}


def test_official_key_layout(model):
    keys = set(model.state_dict())
    assert len(keys) == 210
    block = "layers.0.blocks.0."
    for suffix in ("ln_1.weight", "ln_1.bias", "self_attention.in_proj.weight", "self_attention.conv2d.weight",
                   "self_attention.conv2d.bias", "self_attention.x_proj_weight", "self_attention.dt_projs_weight",
                   "self_attention.dt_projs_bias", "self_attention.A_logs", "self_attention.Ds",
                   "self_attention.out_norm.weight", "self_attention.out_norm.bias", "self_attention.out_proj.weight"):
        assert block + suffix in keys
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "norm.weight",
            "layers.2.blocks.8.ln_1.weight", "layers.3.blocks.1.self_attention.Ds"} <= keys
    for stage in range(3):
        assert {f"layers.{stage}.downsample.norm.weight", f"layers.{stage}.downsample.reduction.weight"} <= keys
    assert not any(key.startswith("layers.3.downsample") or key.startswith("head") for key in keys)
    ssm = model.layers[0].blocks[0].self_attention
    assert ssm.x_proj_weight.shape == (4, 6 + 2 * 16, 192)
    assert ssm.dt_projs_weight.shape == (4, 192, 6)
    assert ssm.A_logs.shape == (4 * 192, 16) and ssm.Ds.shape == (4 * 192,)
    assert model.layers[0].downsample.reduction.weight.shape == (192, 384)
    # 22.12 M backbone parameters (+ 0.77 M head = the 22.9 M of the official file)
    assert sum(parameter.numel() for parameter in model.parameters()) == 22_124_448


def test_checkpoint_round_trip_through_official_loading_path(model, tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    torch.save(_official_style_checkpoint(model), path)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    loaded = build_vmamba_tiny(path)  # explicit path
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        for got, want in zip(loaded(images), expected, strict=True):
            torch.testing.assert_close(got, want)
    # the same file through the environment variable and through the cache folder
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    assert torch.equal(build_vmamba_tiny().norm.weight, model.norm.weight)
    monkeypatch.delenv(WEIGHTS_ENV)
    default_weights_path().parent.mkdir(parents=True)
    default_weights_path().symlink_to(path)
    assert torch.equal(build_vmamba_tiny().layers[2].blocks[8].self_attention.A_logs,
                       model.layers[2].blocks[8].self_attention.A_logs)


def test_checkpoint_with_other_keys_is_rejected_clearly(model, tmp_path):
    checkpoint = _official_style_checkpoint(model)
    del checkpoint["model"]["layers.1.blocks.0.self_attention.Ds"]
    checkpoint["model"]["layers.0.blocks.0.op.x_proj_weight"] = torch.zeros(1)  # v2-style key
    path = tmp_path / "other.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"1 missing keys.*layers\.1\.blocks\.0\.self_attention\.Ds.*v2/v3"):
        VMambaTiny(path)


class _TrainingConfig:  # stands in for the yacs config object a training checkpoint may pickle
    epochs = 300


def test_checkpoint_with_pickled_objects_needs_an_explicit_opt_in(model, tmp_path, caplog, monkeypatch):
    checkpoint = _official_style_checkpoint(model)
    checkpoint["config"] = _TrainingConfig()
    path = tmp_path / CHECKPOINT_NAME
    torch.save(checkpoint, path)
    monkeypatch.delenv("MEDAD_TRUST_CHECKPOINTS", raising=False)
    with pytest.raises(ValueError, match="MEDAD_TRUST_CHECKPOINTS=1"):
        VMambaTiny(path)
    monkeypatch.setenv("MEDAD_TRUST_CHECKPOINTS", "1")
    with caplog.at_level(logging.WARNING, logger="medad.backbones.vmamba"):
        loaded = VMambaTiny(path)
    assert "full unpickling" in caplog.text
    assert torch.equal(loaded.patch_embed.proj.weight, model.patch_embed.proj.weight)


def test_norm_last_stage_only_changes_the_deepest_features(model):
    normed = VMambaTiny()
    normed.load_state_dict(model.state_dict())
    normed.norm_last_stage = True
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain, with_norm = model(images), normed(images)
    for got, want in zip(with_norm[:3], plain[:3], strict=True):
        torch.testing.assert_close(got, want)
    expected = torch.nn.functional.layer_norm(plain[3].permute(0, 2, 3, 1), (768,), model.norm.weight, model.norm.bias)
    torch.testing.assert_close(with_norm[3], expected.permute(0, 3, 1, 2))


# --------------------------------------------------------------------------- missing weights


def test_missing_weights_error_names_the_expected_file(no_weights):
    with pytest.raises(MissingWeightsError) as raised:
        build_vmamba_tiny()
    message = str(raised.value)
    assert str(no_weights / "home" / ".cache" / "medad" / "weights" / CHECKPOINT_NAME) in message
    assert CHECKPOINT_URL in message and WEIGHTS_ENV in message


def test_missing_weights_error_names_env_and_explicit_paths(no_weights, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(no_weights / "env" / CHECKPOINT_NAME))
    with pytest.raises(MissingWeightsError, match="env"):
        build_vmamba_tiny()
    explicit = no_weights / "explicit" / "vmamba.pth"
    for call in (lambda: build_vmamba_tiny(explicit), lambda: build_vmamba_tiny(explicit, allow_random=True),
                 lambda: VMambaTiny(explicit)):
        with pytest.raises(MissingWeightsError) as raised:
            call()
        assert str(explicit) in str(raised.value) and CHECKPOINT_URL in str(raised.value)


def test_allow_random_warns(no_weights, caplog):
    with caplog.at_level(logging.WARNING, logger="medad.backbones.vmamba"):
        teacher = build_vmamba_tiny(allow_random=True)
    assert isinstance(teacher, VMambaTiny)
    assert "RANDOM weights" in caplog.text
