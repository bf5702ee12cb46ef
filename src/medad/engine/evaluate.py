"""Score every test image of a task and compute image (and pixel) metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from medad.console import progress
from medad.metrics import image_metrics, pixel_metrics


@dataclass
class Evaluation:
    """Scores, maps and metrics of one model on one set of labelled images."""

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None
    metrics: dict[str, float | int | None] = field(default_factory=dict)


@torch.no_grad()
def predict_batches(predict_rows: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], n_images: int,
                    batch_size: int = 16, desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """Run ``predict_rows(rows) -> (maps, scores)`` over all ``n_images`` in slices (no image dropped)."""
    maps, scores = [], []
    for start in progress(range(0, n_images, batch_size), desc=desc, leave=False, unit="batch"):
        batch_maps, batch_scores = predict_rows(slice(start, min(start + batch_size, n_images)))
        maps.append(batch_maps.float().cpu().numpy())
        scores.append(batch_scores.float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def summarise(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray,
              masks: np.ndarray | None) -> Evaluation:
    """Metrics of scored images; pixel metrics only when masks are given."""
    if len(scores) != len(labels):
        raise AssertionError(f"{len(scores)} scores for {len(labels)} images: some images were not scored")
    metrics: dict[str, float | int | None] = {
        "n_test_normal": int((labels == 0).sum()),
        "n_test_abnormal": int((labels == 1).sum()),
        **image_metrics(labels, scores),
        "pixel_auroc": None,
        "pixel_aupro": None,
    }
    if masks is not None:
        metrics.update(pixel_metrics(masks, maps))
    return Evaluation(scores, labels, maps, masks, metrics)


def evaluate_rows(predict_rows: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], n_images: int, labels,
                  masks: torch.Tensor | None = None, batch_size: int = 16) -> Evaluation:
    """Score ``n_images`` with ``predict_rows`` and compute metrics against their labels (and masks)."""
    labels = np.asarray(labels, dtype=int)
    maps, scores = predict_batches(predict_rows, n_images, batch_size)
    mask_array = None
    if masks is not None and bool(masks.any()):
        mask_array = masks[:, 0].numpy() > 0.5
    return summarise(scores, labels, maps, mask_array)


def evaluate_images(predict, images: torch.Tensor, labels, masks: torch.Tensor | None = None,
                    batch_size: int = 16) -> Evaluation:
    """Score N images with ``predict(batch) -> (maps, scores)`` and compute metrics."""
    return evaluate_rows(lambda rows: predict(images[rows]), len(images), labels, masks, batch_size)
