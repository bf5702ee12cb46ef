"""Results a person reads: thresholds that say where they come from and how sure they are; readable heat maps."""

import json

import numpy as np
import pytest
from PIL import Image

from medad.cli.main import main
from medad.engine.thresholds import AUTO_RULE, MIN_RELIABLE_K, describe_rule, rule_threshold
from medad.visualize import MAX_SIDE, MIN_SIDE, display_size, save_heatmap_figure


def test_auto_threshold_reports_its_support_scores_and_warns_for_small_k(fewshot_checkpoint, phantom_head, tmp_path,
                                                                         capsys):
    """Defect: with K=4 the `auto` threshold said nothing about how uncertain a threshold from 4 images is."""
    supports = sorted((phantom_head.root / "train" / "good").iterdir())[:4]
    assert main(["fewshot", "score", "--checkpoint", str(fewshot_checkpoint), "--support", *map(str, supports),
                 "--query", str(phantom_head.root / "test"), "--out", str(tmp_path / "out"),
                 "--support-cache", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    scored = json.loads((tmp_path / "out" / "scores.json").read_text())
    rule = scored["threshold_rule"]
    assert rule["rule"] == "support-leave-one-out" and rule["k"] == 4 and len(rule["support_scores"]) == 4
    assert rule["auto_rule"] == AUTO_RULE["standardised"]  # the default model's scores are standardised
    assert scored["threshold"] == rule["value"] == rule_threshold(rule["auto_rule"], rule["support_scores"])
    assert "rests on only K=4 supports" in captured.err and f"K ≥ {MIN_RELIABLE_K}" in captured.err
    assert "% of abnormal images normal" in captured.err
    assert "measured with D²4FAD-NN" in captured.err  # the figures name the scorer they were measured with
    assert describe_rule(rule["auto_rule"], 4) in captured.out
    assert all(row["abnormal"] == (row["score"] > scored["threshold"]) for row in scored["images"])


def test_threshold_from_held_out_normals_is_a_stated_percentile(rd4ad_checkpoint, phantom_head, tmp_path, capsys):
    """Defect: the only thresholds were a number or `auto`; predictions did not record the rule used."""
    heldout = phantom_head.root / "test" / "good"
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(heldout), "--out", str(tmp_path / "ref"),
                 "--quiet"]) == 0
    reference = [row["score"] for row in json.loads((tmp_path / "ref" / "scores.json").read_text())["images"]]
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(phantom_head.root / "test" / "lesion"),
                 "--out", str(tmp_path / "out"), "--threshold-from", str(heldout),
                 "--threshold-percentile", "90"]) == 0
    scored = json.loads((tmp_path / "out" / "scores.json").read_text())
    rule = scored["threshold_rule"]
    assert rule["rule"] == "held-out-percentile" and rule["percentile"] == 90 and rule["n_heldout"] == 6
    assert scored["threshold"] == pytest.approx(np.percentile(reference, 90), rel=1e-5)
    assert "90th percentile" in rule["description"] and "only 6 held-out normal scores" in capsys.readouterr().err
    assert "abnormal" in (tmp_path / "out" / "scores.csv").read_text().splitlines()[0]
    fixed = tmp_path / "fixed"
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(heldout), "--out", str(fixed),
                 "--threshold", "0.5", "--quiet"]) == 0
    assert json.loads((fixed / "scores.json").read_text())["threshold_rule"]["rule"] == "fixed"


def test_heatmap_keeps_aspect_ratio_and_resolution_with_colour_bar_score_and_verdict(tmp_path):
    """Defect: heat maps were 2× the model's input size, squashed square, with no colour bar and no score."""
    assert display_size(150, 300) == (150, 300)
    assert display_size(2000, 1000) == (MAX_SIDE, MAX_SIDE // 2)
    assert display_size(1, 1) == (MIN_SIDE, MIN_SIDE)
    image = np.full((3, 150, 300), 0.5, np.float32)
    amap = np.zeros((64, 64))
    amap[:, 32:] = 1.0  # right half anomalous: must land on the right half of the wide image
    path = tmp_path / "wide.png"
    save_heatmap_figure(path, image, amap, 0.0, 1.0, "scan.png\nscore 0.9 · ABNORMAL (score > threshold 0.5)")
    figure = Image.open(path)
    assert figure.text["Description"].endswith("ABNORMAL (score > threshold 0.5)")
    pixels = np.asarray(figure.convert("RGB")).astype(int)
    width, height = figure.size
    assert width > 2 * 300 and 150 < height < 300  # two panels at full resolution, not squashed
    right_panel = pixels[-158:-8, 316:616]
    red = (right_panel[..., 0] > right_panel[..., 2] + 40).mean(axis=0)
    assert red[:140].mean() < 0.2 and red[160:].mean() > 0.8
    bar = pixels[-158:-8, 624:638]
    assert bar[0, 0, 0] > 100 and bar[0, 0, 2] < 60 and bar[-1, 0, 2] > 100  # jet: red on top, blue at the bottom


def test_predict_heatmaps_are_readable_figures(rd4ad_checkpoint, tmp_path):
    wide = tmp_path / "in" / "wide.png"
    wide.parent.mkdir()
    Image.fromarray((np.random.default_rng(1).random((90, 240)) * 255).astype(np.uint8)).save(wide)
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(wide), "--out", str(tmp_path / "out"),
                 "--threshold", "0.01", "--quiet"]) == 0
    figure = Image.open(tmp_path / "out" / "heatmaps" / "wide.png")
    assert figure.size[0] > 2 * 240 and figure.size[1] < 240
    assert "score" in figure.text["Description"] and "threshold 0.01" in figure.text["Description"]
