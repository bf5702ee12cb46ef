"""PatchCore-style K-shot baseline: nearest-neighbour distance to the support images' patch features.

No training.  Patch features are the teacher's two deeper stages, each averaged
over a 3×3 neighbourhood, the deeper one upsampled to the shallower one's grid
and concatenated (PatchCore's locally aware features).  With K support images
the memory bank holds all their patches (no coreset subsampling is needed at
this size).  Map = distance of each query patch to its nearest bank patch,
upsampled and smoothed; image score = max of the map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medad.backbones.base import Teacher
from medad.models.rd4ad import check_finite
from medad.scoring import DEFAULT_SIGMA, image_scores, smooth_maps


class PatchCoreKShot:
    """Nearest-neighbour patch scoring against a small bank of normal images."""

    method = "patchcore"

    def __init__(self, teacher: Teacher, sigma: float = DEFAULT_SIGMA) -> None:
        self.teacher = teacher
        self.sigma = sigma

    @torch.no_grad()
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """B×D×h×w locally aware patch features."""
        return self.patch_features_from(self.teacher(images))

    @staticmethod
    def patch_features_from(teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """Patch features from already computed teacher features (its two deepest stages)."""
        pooled = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in teacher_features[-2:]]
        grid = pooled[0].shape[-2:]
        pooled[1] = F.interpolate(pooled[1], size=grid, mode="bilinear", align_corners=False)
        return torch.cat(pooled, dim=1)

    @torch.no_grad()
    def prepare_supports(self, support_images: torch.Tensor) -> torch.Tensor:
        check_finite(support_images)
        features = self.patch_features(support_images)
        return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_finite(images)
        return self.score_features(self.patch_features(images), bank, tuple(images.shape[-2:]))

    @torch.no_grad()
    def score_features(self, features: torch.Tensor, bank: torch.Tensor, image_size: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and scores from precomputed query patch features (reusable across support sets)."""
        batch, dim, height, width = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(batch, -1, dim)
        distances = torch.cdist(patches, bank.unsqueeze(0).expand(batch, -1, -1)).amin(dim=2)
        maps = F.interpolate(distances.view(batch, 1, height, width), size=image_size,
                             mode="bilinear", align_corners=False)[:, 0]
        maps = smooth_maps(maps, self.sigma)
        return maps, image_scores(maps, "max")
