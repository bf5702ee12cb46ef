"""Image- and pixel-level anomaly detection metrics (scikit-learn based)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds of the precision–recall curve."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(f1.max())


def image_metrics(labels, scores) -> dict[str, float]:
    """Image AUROC, AP and F1-max; labels 1 = abnormal."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.shape[0]} labels but {scores.shape[0]} scores")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    if len(np.unique(labels)) != 2:
        raise ValueError("image metrics need both normal and abnormal test images")
    return {
        "image_auroc": float(roc_auc_score(labels, scores)),
        "image_ap": float(average_precision_score(labels, scores)),
        "image_f1max": f1_max(labels, scores),
    }


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, num_thresholds: int = 200) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    PRO at a threshold = mean over connected ground-truth regions of the fraction
    of the region above the threshold; FPR = fraction of normal pixels above it.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    edges = np.linspace(maps.min(), maps.max(), num_thresholds + 1)
    normal_counts, _ = np.histogram(maps[~masks], bins=edges)
    fpr = np.concatenate([[1.0], 1.0 - np.cumsum(normal_counts) / max(normal_counts.sum(), 1)])
    region_overlaps = []
    for mask, amap in zip(masks, maps, strict=True):
        labelled, n_regions = ndimage.label(mask)
        for region in range(1, n_regions + 1):
            counts, _ = np.histogram(amap[labelled == region], bins=edges)
            region_overlaps.append(np.concatenate([[1.0], 1.0 - np.cumsum(counts) / counts.sum()]))
    if not region_overlaps:
        raise ValueError("AUPRO needs at least one anomalous region in the masks")
    pro = np.mean(region_overlaps, axis=0)
    order = np.argsort(fpr)
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= max_fpr
    fpr_cut = np.concatenate([fpr[keep], [max_fpr]])
    pro_cut = np.concatenate([pro[keep], [np.interp(max_fpr, fpr, pro)]])
    return float(np.trapezoid(pro_cut, fpr_cut) / max_fpr)


def pixel_metrics(masks: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """Pixel AUROC and AUPRO over all test images (masks 0/1, maps same shape)."""
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    if not masks.any():
        raise ValueError("pixel metrics need at least one anomalous pixel")
    return {
        "pixel_auroc": float(roc_auc_score(masks.ravel(), maps.ravel())),
        "pixel_aupro": aupro(masks, maps),
    }
