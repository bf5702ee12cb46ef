"""D²4FAD-NN (medad's default few-shot model): support matching, no collapse, honest normalisation."""

import numpy as np
import pytest
import torch

from medad.backbones import build_teacher
from medad.engine.fewshot import evaluate_fewshot, train_fewshot
from medad.data.images import load_images
from medad.engine.released_protocol import released_protocol_auroc, released_protocol_scores
from medad.engine.training import TrainConfig
from medad.models.d24fad import D24FAD, D24FADConfig
from medad.models.d24fad_nn import D24FADNN, D24FADNNConfig, SupportBank
from medad.models.factory import build_model, load_trained_model
from medad.models.support_matching import (mean_pairwise_cosine, nearest_support_distances,
                                           weighted_support_distance)


def test_nearest_support_matching_does_not_assume_registration():
    torch.manual_seed(0)
    support = torch.randn(1, 16, 8, 8)
    shifted = torch.roll(support, shifts=(2, 3), dims=(2, 3))  # the same content, elsewhere in the image
    other = torch.randn(1, 16, 8, 8)
    distances = nearest_support_distances(shifted, torch.cat([support, other]))
    assert distances.shape == (1, 2, 8, 8)
    assert distances[0, 0].abs().max() < 1e-5  # every location finds itself in the shifted support
    assert distances[0, 1].min() > 0.05
    same_location = 1 - torch.nn.functional.cosine_similarity(shifted, support, dim=1)
    assert same_location.mean() > 0.5  # a location-by-location comparison would call it anomalous


def test_support_weights_follow_the_query_and_the_temperature():
    distances = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1).expand(2, 3, 4, 4).clone()
    distances[1] = distances[1].flip(0)  # the second query is closest to the last support
    sharp, weights = weighted_support_distance(distances, temperature=1e-4)
    assert torch.allclose(sharp, torch.full((2, 4, 4), 0.1), atol=1e-4)  # → min over supports
    assert weights[0, 0].min() > 0.99 and weights[1, 2].min() > 0.99
    flat, _ = weighted_support_distance(distances, temperature=1e4)
    assert torch.allclose(flat, torch.full((2, 4, 4), 0.5), atol=1e-3)  # → mean over supports
    with pytest.raises(ValueError, match="positive"):
        weighted_support_distance(distances, 0.0)


def test_pairwise_cosine_is_one_for_identical_images_and_low_for_random_ones():
    torch.manual_seed(0)
    same = torch.randn(1, 8, 4, 4).expand(3, -1, -1, -1)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0, abs=1e-5)
    assert abs(mean_pairwise_cosine(torch.randn(6, 64, 4, 4))) < 0.1


def test_config_rejects_unknown_maps_and_augmentations():
    with pytest.raises(ValueError, match="maps"):
        D24FADNNConfig(maps=("support", "magic"))
    with pytest.raises(ValueError, match="augment"):
        D24FADNNConfig(augment="rotate")
    with pytest.raises(ValueError, match="score"):
        D24FADNNConfig(score="median")
    with pytest.raises(ValueError, match="lambda"):
        D24FADNNConfig(lambda_tsd=0.0, lambda_ssd=0.0)


def test_supports_get_no_gradient_from_the_self_distillation_term():
    torch.manual_seed(0)
    teacher = build_teacher("efficientnet_lite0", weights=None)
    queries, supports = teacher(torch.rand(2, 3, 32, 32)), teacher(torch.rand(2, 3, 32, 32))
    supports = [s.requires_grad_() for s in supports]
    D24FADNN(teacher, D24FADNNConfig(lambda_tsd=0.0)).loss(queries, supports).backward()
    assert all(s.grad is None for s in supports)
    supports = [s.detach().requires_grad_() for s in supports]
    D24FADNN(teacher, D24FADNNConfig(lambda_tsd=0.0, stop_gradient_supports=False)).loss(queries, supports).backward()
    assert any(s.grad is not None and s.grad.abs().sum() > 0 for s in supports)


@pytest.fixture(scope="module")
def phantom_images(phantom_head, phantom_chest):
    return {task.name: load_images(task.train, 64)[0] for task in (phantom_head, phantom_chest)}


@pytest.fixture(scope="module")
def trained(phantom_images):
    torch.manual_seed(0)
    model = D24FADNN(build_teacher("efficientnet_lite0"))
    result = train_fewshot(model, phantom_images, TrainConfig(epochs=30, batch_size=4, seed=0), ks=(2, 4),
                           max_queries_per_task=8)
    return model.eval(), result


@pytest.mark.slow
def test_student_stays_near_the_teacher_where_the_paper_model_collapses(trained, phantom_images):
    """The collapse test: the inter-image cosine of the student's features approaches the teacher's.

    (A freshly initialised decoder starts near 1 — its last 1×1 convolution sees only positive,
    post-ReLU inputs — so what matters is where training takes it.)
    """
    model, result = trained
    first, last = result.log[0], result.log[-1]
    assert len(result.log) == 30 and {"student_cos", "teacher_cos", "loss"} <= set(last)
    for start, student, teacher in zip(first["student_cos"], last["student_cos"], last["teacher_cos"], strict=True):
        assert student < 0.9 and student - teacher < 0.3 and student < start - 0.1
    torch.manual_seed(0)
    paper = D24FAD(model.teacher, D24FADConfig())
    paper_log = train_fewshot(paper, phantom_images, TrainConfig(epochs=6, batch_size=4, seed=0), ks=(2, 4),
                              max_queries_per_task=8).log
    assert min(paper_log[-1]["student_cos"]) > 0.97  # the paper's objective is met by a near-constant student
    assert np.mean(paper_log[-1]["student_cos"]) > np.mean(last["student_cos"]) + 0.1


def test_lesions_score_above_normals_and_normalisation_uses_supports_only(trained, phantom_head, phantom_images):
    model, _ = trained
    test, _ = load_images(phantom_head.test, 64)
    labels = [s.label for s in phantom_head.test]
    supports = phantom_images["phantom_head"][:4]
    evaluation = evaluate_fewshot(model, supports, test, labels, batch_size=5)
    assert len(evaluation.scores) == len(test) and evaluation.metrics["image_auroc"] > 0.55
    tsd_only = D24FADNN(model.teacher, D24FADNNConfig(maps=("tsd",)))
    tsd_only.load_learnable_state_dict(model.learnable_state_dict())
    # it learned (≥: with another thread count the float sums can land exactly on 0.75)
    assert evaluate_fewshot(tsd_only.eval(), supports, test, labels).metrics["image_auroc"] >= 0.75
    bank = model.prepare_supports(supports)
    assert bank.stats.shape == (2, 2) and (bank.stats[:, 1] > 0).all()
    again = model.prepare_supports(supports)  # statistics depend on the supports alone
    assert torch.equal(bank.stats, again.stats)
    restored = SupportBank.from_tensors(bank.to_tensors())
    maps, scores = model.predict(test[:3], restored)
    assert torch.allclose(scores, torch.as_tensor(evaluation.scores[:3]), atol=1e-4)
    assert maps.shape == (3, 64, 64)
    components, _ = model.map_components(model.encode_queries(test[:3]), bank)
    assert list(components) == list(model.config.maps) and torch.allclose(sum(components.values()), maps, atol=1e-5)
    with_support = D24FADNN(model.teacher, D24FADNNConfig(maps=("support", "teacher_nn")))
    with_support.load_learnable_state_dict(model.learnable_state_dict())
    _, _, weights = with_support.eval().score_encoded(model.encode_queries(test[:3]), with_support.prepare_supports(
        supports))
    assert len(weights) == len(with_support.config.support_scales)
    assert all(w.shape == (3, 4) and torch.allclose(w.sum(1), torch.ones(3), atol=1e-4) for w in weights)


def test_checkpoint_round_trip_through_the_factory(trained, tmp_path, phantom_images):
    from medad.checkpoints import save_model

    model, _ = trained
    save_model(tmp_path / "model.safetensors", model.learnable_state_dict(), {**model.meta(), "image_size": 64})
    loaded, meta = load_trained_model(tmp_path, expected_method=("d24fad_nn",))
    assert meta["config"]["maps"] == ["tsd", "teacher_nn"] and meta["config"]["score"] == "top5"
    supports = phantom_images["phantom_head"][:3]
    queries = phantom_images["phantom_head"][3:6]
    assert torch.allclose(loaded.predict(queries, loaded.prepare_supports(supports))[1],
                          model.predict(queries, model.prepare_supports(supports))[1], atol=1e-5)
    assert build_model("d24fad_nn", "efficientnet_lite0", {"augment": "flip"}, None).config.augment == "flip"


def test_released_protocol_blur_mixes_each_map_with_its_neighbours():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    maps = rng.random((40, 8, 8))
    scores, kept = released_protocol_scores(maps, labels)
    assert len(kept) == 32 and len(scores) == 32  # drop_last with batches of 16: 8 images never scored
    changed = maps.copy()
    changed[6] += 5.0  # only image 6 changes ...
    again, _ = released_protocol_scores(changed, labels)
    position = list(kept).index(5)
    assert again[position] > scores[position] + 0.1  # ... and its neighbour 5's score rises with it
    weak = rng.normal(size=(40, 8, 8))
    weak[20:] += 0.3  # a lesion signal far below the per-image noise ...
    honest = np.array([m.max() for m in weak])
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(labels, honest) < 0.8  # ... that per-image scoring barely sees
    assert released_protocol_auroc(weak, labels)[0] > 0.95  # averaging same-label neighbours lifts it
    with pytest.raises(ValueError, match="fewer than 16"):
        released_protocol_auroc(maps[:10], labels[:10])
