import numpy as np
import pytest
import torch

from medad.metrics import aupro, f1_max, image_metrics, pixel_metrics
from medad.scoring import anomaly_maps, distillation_loss, image_scores, smooth_maps


def test_smoothing_never_mixes_images():
    maps = torch.zeros(3, 32, 32)
    maps[1, 16, 16] = 10.0
    smoothed = smooth_maps(maps, sigma=4)
    assert smoothed[0].abs().max() == 0 and smoothed[2].abs().max() == 0
    assert smoothed[1].sum() == pytest.approx(10.0, rel=0.05)


def test_distillation_loss_is_zero_for_identical_features_and_two_for_opposite():
    features = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    assert distillation_loss(features, features).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(features, [-f for f in features]).item() == pytest.approx(4.0, abs=1e-5)
    assert distillation_loss(features, [-f for f in features], mode="flattened").item() == pytest.approx(4.0, abs=1e-5)
    with pytest.raises(ValueError):
        distillation_loss(features, features, mode="bogus")


def test_anomaly_map_locates_the_disagreement_and_scores_reduce():
    distance = torch.zeros(2, 8, 8)
    distance[1, 2, 6] = 1.0
    maps = anomaly_maps([distance], (32, 32), sigma=1)
    assert maps.shape == (2, 32, 32)
    y, x = divmod(int(maps[1].argmax()), 32)
    assert 8 <= y <= 12 and 24 <= x <= 28
    assert image_scores(maps, "max")[1] > image_scores(maps, "max")[0]
    assert image_scores(maps, "mean")[1] == pytest.approx(maps[1].mean().item())


def test_image_metrics_known_values():
    labels = np.array([0, 0, 1, 1])
    metrics = image_metrics(labels, np.array([0.1, 0.4, 0.35, 0.8]))
    assert metrics["image_auroc"] == pytest.approx(0.75)
    assert f1_max(labels, np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(labels, np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(ValueError, match="both"):
        image_metrics(np.zeros(4), np.arange(4.0))


def test_pixel_metrics_perfect_and_inverted_maps():
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 10:14, 8:12] = True
    perfect = masks.astype(float) + 0.01 * np.random.default_rng(0).random(masks.shape)
    result = pixel_metrics(masks, perfect)
    assert result["pixel_auroc"] == pytest.approx(1.0)
    assert result["pixel_aupro"] > 0.98
    assert aupro(masks, -perfect) < 0.05
