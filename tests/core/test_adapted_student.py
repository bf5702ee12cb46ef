"""Test-time adaptation (medad.models.adapted_student): generic training, adaptation to the supports, scoring."""

from __future__ import annotations

import pytest
import torch

from medad.backbones import build_teacher
from medad.engine.fewshot import leave_one_out_scores
from medad.models.adapted_student import (AdaptedStudentConfig, AdaptedStudentFewShot, AdaptedStudentScoring,
                                          TeacherQueries, adapt_student, load_student, student_maps, teacher_features,
                                          train_generic_student)
from medad.models.rd4ad import RD4AD
from medad.models.support_scoring import SupportScoring, SupportScoringConfig, augment_supports, reduce_map


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher("efficientnet_lite0").eval()


def _images(seed: int, n: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(n, 3, size, size)
    return (0.6 * base + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def generic_state(teacher):
    return train_generic_student(teacher, teacher_features(teacher, _images(10, 8)), steps=3, batch_size=4,
                                 progress=False)


def test_generic_training_is_seeded_and_changes_the_student(teacher, generic_state):
    features = teacher_features(teacher, _images(10, 8))
    again = train_generic_student(teacher, features, steps=3, batch_size=4, progress=False)
    assert all(torch.equal(generic_state[key], again[key]) for key in generic_state)
    torch.manual_seed(0)
    fresh = RD4AD(teacher).student.state_dict()
    assert any(not torch.equal(fresh[key], generic_state[key]) for key in fresh if fresh[key].is_floating_point())


def test_adaptation_lowers_the_loss_on_the_supports(teacher, generic_state):
    views = teacher_features(teacher, _images(0, 4))
    before = load_student(teacher, generic_state)
    assert not before.student.training
    after = adapt_student(teacher, generic_state, views, steps=8, learning_rate=1e-3)
    with torch.no_grad():  # the commands score under no_grad: adaptation must still train
        again = adapt_student(teacher, generic_state, views, steps=8, learning_rate=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(after.student.state_dict().values(),
                                                 again.student.state_dict().values(), strict=True))
    with torch.no_grad():
        assert after.loss(views) < before.loss(views)
    # the generic state itself is left untouched
    assert all(torch.equal(before.student.state_dict()[key], generic_state[key]) for key in generic_state)


def test_scores_are_the_support_term_plus_the_weighted_student_term(teacher, generic_state):
    config = AdaptedStudentConfig(steps=2, weight=0.5)
    scorer = AdaptedStudentScoring(teacher, generic_state, config)
    supports, queries = _images(0, 3), _images(1, 4)
    prepared = scorer.prepare_supports(supports)
    maps, scores = scorer.predict(queries, prepared)
    assert maps.shape == (4, 64, 64) and scores.shape == (4,)
    encoded = SupportScoring.encoding_from_teacher(teacher_features(teacher, queries), (64, 64))
    support_term = reduce_map(scorer.support_scoring.score_terms(encoded, prepared.bank)[0], "top1")
    student_term = reduce_map(student_maps(prepared.model, teacher_features(teacher, queries), (64, 64)), "top1")
    expected = support_term + 0.5 * student_term / prepared.student_scale
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-5)
    # the student scale is the mean score of the supports themselves
    own = reduce_map(student_maps(prepared.model, teacher_features(teacher, supports), (64, 64)), "top1")
    assert prepared.student_scale == pytest.approx(float(own.mean()), rel=1e-4)


def test_both_terms_change_when_the_supports_change(teacher, generic_state):
    scorer = AdaptedStudentScoring(teacher, generic_state, AdaptedStudentConfig(steps=2, weight=1.0))
    queries = teacher_features(teacher, _images(1, 4))
    first, second = scorer.prepare_supports(_images(0, 3)), scorer.prepare_supports(_images(5, 3))
    assert not torch.allclose(student_maps(first.model, queries, (64, 64)), student_maps(second.model, queries, (64, 64)))
    assert not torch.allclose(first.bank.patches, second.bank.patches)
    assert not torch.allclose(scorer.score_features(queries, first, (64, 64))[1],
                              scorer.score_features(queries, second, (64, 64))[1])


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(weight=-0.5),
                                 dict(support=SupportScoringConfig(global_weight=0.5)),
                                 dict(support=SupportScoringConfig(positional=0.1)), dict(support_unit="median")])
def test_config_rejects_bad_options(bad):
    with pytest.raises(ValueError):
        AdaptedStudentConfig(**bad)


def test_config_round_trips_through_a_dict():
    config = AdaptedStudentConfig(steps=150, weight=0.25)
    again = AdaptedStudentConfig.from_dict(config.as_dict())
    assert again == config and again.name == config.name


def test_fewshot_wrapper_scores_like_the_scorer_and_its_supports_round_trip(teacher, generic_state):
    model = AdaptedStudentFewShot(teacher, generic_state, AdaptedStudentConfig(steps=2))
    supports, queries = _images(0, 3), _images(1, 5)
    prepared = model.prepare_supports(supports)
    maps, scores = model.predict(queries, prepared)
    _, expected = model.scorer.predict(queries, model.scorer.prepare_supports(supports))
    assert torch.allclose(scores, expected, rtol=1e-5, atol=1e-6)  # adaptation is seeded: same supports, same student
    # queries encoded in two parts and concatenated score as one batch
    encoded = TeacherQueries.concat([model.encode_queries(queries[:2]), model.encode_queries(queries[2:])])
    assert len(encoded) == 5 and torch.allclose(model.score_encoded(encoded[1:4], prepared)[1], scores[1:4], atol=1e-5)
    # the support cache's tensors give back the same scores
    restored = model.supports_from_tensors({k: v.clone() for k, v in prepared.to_tensors().items()})
    assert torch.allclose(model.predict(queries, restored)[1], scores, atol=1e-5)
    assert maps.shape == (5, 64, 64) and model.meta()["method"] == "adapted_student"


def test_fewshot_wrapper_rejects_empty_and_non_finite_supports(teacher, generic_state):
    model = AdaptedStudentFewShot(teacher, generic_state, AdaptedStudentConfig(steps=1))
    with pytest.raises(ValueError, match="at least one"):
        model.prepare_supports(_images(0, 3)[:0])
    bad = _images(0, 2)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        model.prepare_supports(bad)


def test_held_out_scale_scores_each_support_by_a_student_adapted_to_the_others(teacher, generic_state):
    supports = _images(0, 3)
    # without adaptation every student is the generic one: both units agree
    plain = AdaptedStudentScoring(teacher, generic_state, AdaptedStudentConfig(steps=0))
    held = AdaptedStudentScoring(teacher, generic_state, AdaptedStudentConfig(steps=0, student_scale="held_out"))
    assert held.prepare_supports(supports).student_scale == pytest.approx(plain.prepare_supports(supports).student_scale)
    # adapted, the held-out unit is each support's score by a student that never saw it
    config = AdaptedStudentConfig(steps=6, learning_rate=1e-2, student_scale="held_out")
    scorer = AdaptedStudentScoring(teacher, generic_state, config)
    views = teacher_features(teacher, augment_supports(supports, config.support.augment))
    owner = torch.arange(3).repeat(4)
    expected = []
    for i in range(3):
        model = adapt_student(teacher, generic_state, [v[owner != i] for v in views], 6, 1e-2)
        expected.append(float(reduce_map(student_maps(model, [v[i:i + 1] for v in views], (64, 64)), "top1")))
    assert scorer.prepare_supports(supports).student_scale == pytest.approx(sum(expected) / 3, rel=1e-4)
    assert "scale=held_out" in config.name and "scale" not in AdaptedStudentConfig().name
    with pytest.raises(ValueError, match="student_scale"):
        AdaptedStudentConfig(student_scale="loo")


@pytest.mark.parametrize("unit", ["supports", "held_out"])
def test_leave_one_out_scores_score_each_support_against_the_others_in_the_full_sets_units(teacher, generic_state,
                                                                                           unit):
    config = AdaptedStudentConfig(steps=3, learning_rate=1e-2, student_scale=unit)
    model = AdaptedStudentFewShot(teacher, generic_state, config)
    supports = _images(0, 3)
    prepared = model.prepare_supports(supports)
    loo = model.leave_one_out_scores(supports, prepared)
    # the definition, by hand: support i against a bank of the others' views, and by a student adapted to them
    scorer = model.scorer
    expected = []
    for i in range(3):
        others = torch.cat([supports[:i], supports[i + 1:]])
        views = teacher_features(teacher, augment_supports(others, config.support.augment))
        student = adapt_student(teacher, generic_state, views, 3, 1e-2)
        own = teacher_features(teacher, supports[i:i + 1])
        bank = scorer.support_scoring.bank_from_views(SupportScoring.encoding_from_teacher(views, (64, 64)), 2)
        support_term = reduce_map(scorer.support_scoring.raw_maps(SupportScoring.encoding_from_teacher(own, (64, 64)),
                                                                  bank) / prepared.bank.patch_scale, "top1")
        student_term = reduce_map(student_maps(student, own, (64, 64)), "top1") / prepared.student_scale
        expected.append(float(support_term + config.weight * student_term))
    assert loo == pytest.approx(expected, rel=1e-4)
    # through the support cache's tensors, and through the engine's threshold helper, the same figures
    restored = model.supports_from_tensors(prepared.to_tensors())
    assert model.leave_one_out_scores(supports, restored) == pytest.approx(loo, rel=1e-5)
    assert leave_one_out_scores(model, supports, prepared) == pytest.approx(loo, rel=1e-5)


@pytest.fixture(scope="module")
def tsd_student(teacher):
    """A learned model's student (here RD4AD's, generic-trained on other images): what the T→S term reads."""
    state = train_generic_student(teacher, teacher_features(teacher, _images(20, 8)), steps=3, batch_size=4,
                                  progress=False)
    return load_student(teacher, state).student


def test_tsd_term_is_each_querys_score_in_units_of_its_most_similar_support(teacher, generic_state, tsd_student):
    plain = AdaptedStudentScoring(teacher, generic_state, AdaptedStudentConfig(steps=1, weight=0.25))
    with_tsd = AdaptedStudentScoring(teacher, generic_state, AdaptedStudentConfig(steps=1, weight=0.25,
                                                                                  tsd_weight=0.5, tsd_max_k=2),
                                     tsd_student=tsd_student)
    supports = _images(0, 2)
    queries = torch.cat([supports[1:], _images(1, 3)])  # the first query is a support itself
    features = teacher_features(teacher, queries)
    prepared, prepared_plain = with_tsd.prepare_supports(supports), plain.prepare_supports(supports)
    added = with_tsd.score_features(features, prepared, (64, 64))[1] - plain.score_features(features, prepared_plain,
                                                                                            (64, 64))[1]
    # by hand: top-1 % of the T→S map over the nearest support's (cosine of pooled deepest features) own score
    own = reduce_map(with_tsd.tsd_maps(features, (64, 64)), "top1")
    support_scores = reduce_map(with_tsd.tsd_maps(teacher_features(teacher, supports), (64, 64)), "top1")
    pooled = lambda f: torch.nn.functional.normalize(f[-1].mean(dim=(2, 3)), dim=1)  # noqa: E731
    nearest = (pooled(features) @ pooled(teacher_features(teacher, supports)).T).argmax(dim=1)
    assert torch.allclose(added, 0.5 * own / support_scores[nearest], rtol=1e-4)
    assert added[0] == pytest.approx(0.5, rel=1e-4)  # a support against itself: exactly one unit
    # leave-one-out: each support against the other one
    loo = with_tsd.leave_one_out_scores(supports, prepared) - plain.leave_one_out_scores(supports, prepared_plain)
    assert torch.allclose(loo, 0.5 * support_scores / support_scores.flip(0), rtol=1e-4)


def test_tsd_term_is_off_above_its_k_and_needs_a_student(teacher, generic_state, tsd_student):
    config = AdaptedStudentConfig(steps=1, tsd_weight=0.5, tsd_max_k=2)
    scorer = AdaptedStudentScoring(teacher, generic_state, config, tsd_student=tsd_student)
    plain = AdaptedStudentScoring(teacher, generic_state, AdaptedStudentConfig(steps=1))
    supports, queries = _images(0, 4), teacher_features(teacher, _images(1, 3))
    prepared = scorer.prepare_supports(supports)
    assert prepared.tsd_supports is None and not scorer.uses_tsd(4) and scorer.uses_tsd(2)
    assert torch.equal(scorer.score_features(queries, prepared, (64, 64))[1],
                       plain.score_features(queries, plain.prepare_supports(supports), (64, 64))[1])
    assert "tsd[w=0.5" in config.name and "tsd" not in AdaptedStudentConfig().name
    with pytest.raises(ValueError, match="tsd_student"):
        AdaptedStudentScoring(teacher, generic_state, config)


def test_tsd_supports_round_trip_through_the_support_cache(teacher, generic_state, tsd_student):
    model = AdaptedStudentFewShot(teacher, generic_state, AdaptedStudentConfig(steps=1, tsd_weight=0.5),
                                  tsd_student=tsd_student)
    supports, queries = _images(0, 2), _images(1, 3)
    prepared = model.prepare_supports(supports)
    restored = model.supports_from_tensors({k: v.clone() for k, v in prepared.to_tensors().items()})
    assert torch.equal(restored.tsd_supports, prepared.tsd_supports)
    assert torch.allclose(model.predict(queries, restored)[1], model.predict(queries, prepared)[1], atol=1e-5)


def test_nearest_support_unit_divides_each_querys_support_term_by_its_most_similar_supports_own(teacher,
                                                                                              generic_state):
    plain = AdaptedStudentFewShot(teacher, generic_state, AdaptedStudentConfig(steps=1, weight=0.0))
    nearest = AdaptedStudentFewShot(teacher, generic_state, AdaptedStudentConfig(steps=1, weight=0.0,
                                                                                 support_unit="nearest"))
    supports = _images(0, 3)
    queries = torch.cat([supports[2:], _images(1, 3)])
    prepared, prepared_plain = nearest.prepare_supports(supports), plain.prepare_supports(supports)
    support_loo = torch.tensor(plain.leave_one_out_scores(supports, prepared_plain))  # the support term alone
    assert torch.allclose(prepared.support_loo, support_loo, rtol=1e-5)
    pooled = lambda f: torch.nn.functional.normalize(f[-1].mean(dim=(2, 3)), dim=1)  # noqa: E731
    similarity = pooled(teacher_features(teacher, queries)) @ pooled(teacher_features(teacher, supports)).T
    expected = plain.predict(queries, prepared_plain)[1] / support_loo[similarity.argmax(dim=1)]
    assert torch.allclose(nearest.predict(queries, prepared)[1], expected, rtol=1e-4)
    # leave-one-out: each support's own term over that of its most similar *other* support
    among = pooled(teacher_features(teacher, supports))
    among = among @ among.T
    among.fill_diagonal_(-torch.inf)
    assert nearest.leave_one_out_scores(supports, prepared) == pytest.approx(
        (support_loo / support_loo[among.argmax(dim=1)]).tolist(), rel=1e-4)
    # the support cache keeps the unit; one support has no other to take a unit from
    restored = nearest.supports_from_tensors({k: v.clone() for k, v in prepared.to_tensors().items()})
    assert torch.equal(restored.support_loo, prepared.support_loo)
    assert nearest.prepare_supports(supports[:1]).support_loo is None
    assert "/nearest+" in nearest.config.name and "/nearest" not in plain.config.name
