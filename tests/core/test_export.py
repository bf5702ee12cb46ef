"""``medad export``: ONNX (run by onnxruntime) and TorchScript graphs score as eager medad does."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medad.cli.main import main
from medad.cli.inputs import load_inputs
from medad.export import ExportResult, export_graph, onnx_session, run_exported, run_onnx, scoring_graph
from medad.models.factory import build_model, load_trained_model

pytest.importorskip("onnxruntime", reason="the export tests run the ONNX graphs with onnxruntime "
                                          "(pip install -e '.[test,deploy]')")

#: exported and eager scores agree to this (float32 graphs; the issue's bound)
TOLERANCE = 1e-4
# The few-shot graphs are checked on the shared run with its default scoring (``default_fewshot_checkpoint``): the
# support map's values after one epoch on phantoms are ~1e-5 with a spread of ~5e-6, so standardised, float32
# rounding in 1 − cos alone moves them by ~1e-2, in eager scoring as in any graph.


def _images(paths, size) -> torch.Tensor:
    return load_inputs([str(path) for path in paths], size, flag="test").tensor()


def test_fewshot_onnx_with_baked_supports_scores_as_fewshot_score(default_fewshot_checkpoint, phantom_chest, tmp_path):
    supports = [str(sample.path) for sample in phantom_chest.train[:3]]
    queries = [sample.path for sample in phantom_chest.test]
    out = tmp_path / "fewshot.onnx"
    assert main(["export", "--checkpoint", str(default_fewshot_checkpoint), "--out", str(out), "--support", *supports,
                 "--quiet"]) == 0
    session = onnx_session(out)
    assert [item.name for item in session.get_inputs()] == ["images"]
    maps, scores = run_onnx(session, _images(queries, 64))
    assert maps.shape == (len(queries), 64, 64)

    scored = tmp_path / "scored"
    assert main(["fewshot", "score", "--checkpoint", str(default_fewshot_checkpoint), "--support", *supports, "--query",
                 *map(str, queries), "--out", str(scored), "--support-cache", str(tmp_path / "cache"),
                 "--quiet"]) == 0
    with open(scored / "scores.csv") as handle:
        cli_scores = {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}
    np.testing.assert_allclose(scores, [cli_scores[str(path)] for path in queries], atol=TOLERANCE, rtol=0)
    assert np.ptp(scores) > 10 * TOLERANCE  # the comparison is not between constants

    description = json.loads((tmp_path / "fewshot.onnx.json").read_text())
    cli_threshold = json.loads((scored / "scores.json").read_text())["threshold"]
    assert description["opset"] == 17 and description["support"] == supports
    assert description["threshold"]["value"] == pytest.approx(cli_threshold, abs=1e-6)
    assert description["verification"]["max_abs_score_difference"] < TOLERANCE


def test_fewshot_graph_takes_any_number_of_supports_as_inputs(default_fewshot_checkpoint, phantom_chest, tmp_path):
    model, _ = load_trained_model(default_fewshot_checkpoint)
    out = tmp_path / "open.onnx"
    assert main(["export", "--checkpoint", str(default_fewshot_checkpoint), "--out", str(out), "--quiet"]) == 0
    session = onnx_session(out)
    assert [item.name for item in session.get_inputs()] == ["images", "patches", "stats"]  # what it reads
    queries = _images([sample.path for sample in phantom_chest.test[:5]], 64)
    for k in (2, 4):  # the graph was traced with 2 random supports
        support_images = _images([sample.path for sample in phantom_chest.train[:k]], 64)
        bank = model.prepare_supports(support_images)
        maps, scores = run_onnx(session, queries, bank.to_tensors())
        eager_maps, eager_scores = model.predict(queries, bank)
        np.testing.assert_allclose(scores, eager_scores.numpy(), atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(maps, eager_maps.numpy(), atol=10 * TOLERANCE, rtol=0)
    with pytest.raises(ValueError, match="support tensor"):
        run_onnx(session, queries)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_rd4ad_graph_scores_as_eager_with_a_dynamic_batch(rd4ad_checkpoint, phantom_head, tmp_path, fmt):
    out = tmp_path / f"rd4ad.{fmt}"
    assert main(["export", "--checkpoint", str(rd4ad_checkpoint), "--format", fmt, "--out", str(out),
                 "--quiet"]) == 0
    model, _ = load_trained_model(rd4ad_checkpoint)
    images = _images([sample.path for sample in phantom_head.test[:7]], 64)
    graph = scoring_graph(model, 64)
    eager_maps, eager_scores = model.predict(images)
    maps, scores = run_exported(ExportResult(out, fmt, graph.input_names, None), images)
    np.testing.assert_allclose(scores, eager_scores.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(maps, eager_maps.numpy(), atol=TOLERANCE, rtol=0)
    assert not model.student.training  # exporting left the BatchNorm layers in eval mode


@pytest.mark.parametrize("method, teacher, options, baked", [
    ("d24fad_nn", "efficientnet_lite0", {"maps": ["support", "tsd", "teacher_nn"], "augment": "flip"}, False),
    ("d24fad", "efficientnet_lite0", {}, True),
    ("d24fad", "efficientnet_lite0", {}, False),
    ("pdd", "efficientnet_lite0+efficientnet_lite1", {}, None)])
def test_other_models_and_options_export_and_score_as_eager(method, teacher, options, baked, tmp_path):
    torch.manual_seed(0)
    model = build_model(method, teacher, options).eval()
    images = torch.rand(3, 3, 64, 64)
    supports = torch.rand(4, 3, 64, 64) if baked is not None else None  # open graphs are traced with K = 2
    graph = scoring_graph(model, 64, supports if baked else None)
    result = export_graph(graph, tmp_path / "model.onnx", "onnx")
    bank = model.prepare_supports(supports) if supports is not None else None
    maps, scores = run_exported(result, images, None if baked or bank is None else bank.to_tensors())
    eager_maps, eager_scores = model.predict(images, bank) if bank is not None else model.predict(images)
    np.testing.assert_allclose(scores, eager_scores.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(maps, eager_maps.numpy(), atol=TOLERANCE, rtol=0)


def test_export_refuses_bad_requests_in_one_line(rd4ad_checkpoint, phantom_head, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    support = str(phantom_head.train[0].path)
    assert main(["export", "--checkpoint", str(rd4ad_checkpoint), "--out", str(out), "--support", support]) == 2
    assert "takes no support images" in capsys.readouterr().err and not out.exists()
    out.write_bytes(b"earlier")
    assert main(["export", "--checkpoint", str(rd4ad_checkpoint), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"earlier"
    assert main(["export", "--method", "adapted_student", "--out", str(tmp_path / "a.onnx")]) == 2
    assert "no fixed graph to export" in capsys.readouterr().err
