"""The bundled few-shot model: its file is the one its model card describes, it loads, and it reproduces the
scores the card recorded on fixed shared images (skipped without ../shared/data)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from medad.checkpoints import load_model
from medad.data.images import load_images
from medad.data.registry import data_root, list_tasks
from medad.data.samples import Sample
from medad.engine.scorers import load_scorer
from medad.models.d24fad_nn import D24FADNNConfig
from medad.models.registry import method_info
from medad.models.adapted_student import AdaptedStudentConfig
from medad.pretrained import (CARD_MD, GENERIC_CARD_MD, HELD_OUT_TASK, bundled_checkpoint, file_sha256,
                              generic_student_card, generic_student_checkpoint, model_card)


def test_the_bundled_file_is_the_one_its_card_describes():
    card = model_card()
    path = bundled_checkpoint()
    assert file_sha256(path) == card["sha256"] and path.stat().st_size == card["file_bytes"]
    state, meta = load_model(path, "d24fad_nn")
    assert {tensor.dtype for tensor in state.values()} == {torch.float16}
    assert meta["train_tasks"] == list(card["training"]["tasks"]) and HELD_OUT_TASK not in meta["train_tasks"]
    assert meta["teacher"] == card["teacher"] == "efficientnet_lite0" and meta["image_size"] == card["image_size"] == 128
    assert card["fp16_max_score_difference"] <= card["fp16_tolerance"] <= 1e-3
    text = path.with_name(CARD_MD).read_text()
    assert card["sha256"] in text and card["command"] in text and HELD_OUT_TASK in text
    assert all(name in text for name in card["training"]["tasks"])


def test_the_bundled_model_is_current_with_the_registry_and_the_default_configuration():
    """The card's training set is every registered task but the held-out one, and its configuration is
    D²4FAD-NN's default: a change of either means rebuilding the bundled model in the same change."""
    card = model_card()
    assert set(card["training"]["tasks"]) == set(list_tasks()) - {HELD_OUT_TASK}
    assert card["config"] == json.loads(json.dumps(asdict(D24FADNNConfig())))
    budget = method_info("d24fad_nn").training
    training = card["training"]
    assert (training["epochs"], training["batch_size"], training["max_queries_per_task"], training["lr"]) == (
        budget.epochs, budget.batch_size, budget.max_queries_per_task, budget.lr)


def _reference_images(reference: dict, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A card's reference supports and queries from the shared data (the test is skipped without them)."""
    try:
        root = data_root()
    except FileNotFoundError:
        pytest.skip("no shared data (../shared/data or $MEDAD_DATA_ROOT)")
    if not all((root / p).is_file() for p in reference["support"] + reference["query"]):
        pytest.skip("the shared data here lacks the card's reference images")
    supports = load_images([Sample(root / p, 0, "good") for p in reference["support"]], size, workers=0)[0]
    queries = load_images([Sample(root / p, label, "query") for p, label in zip(reference["query"], reference["label"],
                                                                                 strict=True)], size, workers=0)[0]
    return supports, queries


def test_the_bundled_model_reproduces_the_cards_scores_on_shared_images():
    reference = model_card()["reference"]
    scorer = load_scorer("d24fad_nn")  # the bundled model
    supports, queries = _reference_images(reference, scorer.image_size)
    with torch.no_grad():
        _, scores = scorer.model.predict(queries, scorer.model.prepare_supports(supports))
    assert scores.tolist() == pytest.approx(reference["scores"], abs=1e-4)
    assert max(reference["scores"]) - min(reference["scores"]) > 1e-2  # the comparison is not between constants


def test_the_bundled_generic_student_is_the_one_its_card_describes():
    card = generic_student_card()
    path = generic_student_checkpoint()
    assert file_sha256(path) == card["sha256"] and path.stat().st_size == card["file_bytes"]
    state, meta = load_model(path, "adapted_student")
    assert {tensor.dtype for tensor in state.values() if tensor.is_floating_point()} == {torch.float32}
    assert meta["train_tasks"] == card["training"]["sources"] and HELD_OUT_TASK not in meta["train_tasks"]
    assert meta["config"] == card["config"] and AdaptedStudentConfig.from_dict(meta["config"]).name == card["scorer"]
    # the row it serves: round 4's, or round 10's built on it (the teacher→student term of the bundled D²4FAD-NN), or
    # round 11's built on that (the support term against the most similar reference)
    development = card["development"]
    assert development["row"] == card["product_row"] or (
        development["benchmark"] == "fewshot_dev_tsd" and card["config"]["tsd_weight"] > 0) or (
        development["benchmark"] == "fewshot_dev_units" and card["config"]["support_unit"] == "nearest")
    assert development["worst_task_difference"] >= -1
    text = path.with_name(GENERIC_CARD_MD).read_text()
    assert card["sha256"] in text and card["command"] in text and card["scorer"] in text


def test_the_bundled_generic_student_reproduces_the_cards_scores_on_shared_images():
    reference = generic_student_card()["reference"]
    scorer = load_scorer("adapted_student")
    supports, queries = _reference_images(reference, scorer.image_size)
    # fine-tuning amplifies the rounding of a different summation order (about 1 % at 2 threads), so the card's
    # scores are reproduced on the one thread they were recorded on
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, scores = scorer.model.predict(queries, scorer.model.prepare_supports(supports))
    finally:
        torch.set_num_threads(threads)
    assert scores.tolist() == pytest.approx(reference["scores"], abs=1e-4)
    assert max(reference["scores"]) - min(reference["scores"]) > 1e-2


def test_the_default_scorer_takes_its_teacher_student_term_from_the_bundled_model():
    scorer = load_scorer()  # the default: the bundled generic student with round 10's teacher→student term
    assert scorer.meta["tsd_model"]["sha256"] == file_sha256(bundled_checkpoint())
    assert scorer.model.scorer.uses_tsd(2) and not scorer.model.scorer.uses_tsd(4)
    assert scorer.identity.endswith(scorer.meta["tsd_model"]["sha256"])  # its support cache changes with that model
    assert "teacher→student term at K ≤ 2" in scorer.name
