"""Feature-distance maps, distillation losses, anomaly maps and image scores.

Conventions (RD4AD, D²4FAD, PDD):
* the distance between two feature maps at a location is 1 − cosine similarity
  of their channel vectors;
* an anomaly map is the sum over scales of those distance maps, each upsampled
  bilinearly to the image size, then Gaussian-smoothed (σ = 4) *per image*;
* the image score is the map's max (RD convention) or mean (D²4FAD paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_SIGMA = 4.0


def cosine_distance_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-location 1 − cos between B×C×H×W maps → B×H×W."""
    return 1.0 - F.cosine_similarity(a, b, dim=1)


def distillation_loss(targets: list[torch.Tensor], predictions: list[torch.Tensor],
                      mode: str = "per_location") -> torch.Tensor:
    """Sum over scales of the distance between target and predicted features.

    ``per_location`` (the papers' Eq.): mean over H×W of per-location 1 − cos.
    ``flattened`` (RD4AD's released code): 1 − cos of each map flattened to one vector.
    """
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} target scales but {len(predictions)} predicted scales")
    total = targets[0].new_zeros(())
    for target, prediction in zip(targets, predictions, strict=True):
        if mode == "per_location":
            total = total + cosine_distance_map(target, prediction).mean()
        elif mode == "flattened":
            total = total + (1.0 - F.cosine_similarity(target.flatten(1), prediction.flatten(1), dim=1)).mean()
        else:
            raise ValueError(f"unknown loss mode {mode!r}: use 'per_location' or 'flattened'")
    return total


def upsample_and_sum(distance_maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Upsample each B×h×w map bilinearly to ``size`` and sum over scales → B×H×W."""
    total = None
    for distance in distance_maps:
        upsampled = F.interpolate(distance.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
        total = upsampled if total is None else total + upsampled
    return total


def smooth_maps(maps: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Gaussian-smooth each B×H×W map independently (never across images).

    Separable (a row pass then a column pass), truncated at 4σ, reflect padding —
    the same result as a 2-D Gaussian filter at a fraction of the cost.
    """
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def anomaly_maps(distance_maps: list[torch.Tensor], size: tuple[int, int],
                 sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Per-scale distance maps → smoothed B×H×W anomaly maps."""
    return smooth_maps(upsample_and_sum(distance_maps, size), sigma)


def image_scores(maps: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """B×H×W anomaly maps → B image scores (``max`` or ``mean``)."""
    if reduce == "max":
        return maps.flatten(1).amax(dim=1)
    if reduce == "mean":
        return maps.flatten(1).mean(dim=1)
    raise ValueError(f"unknown score reduction {reduce!r}: use 'max' or 'mean'")
