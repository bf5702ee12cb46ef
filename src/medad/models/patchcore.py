"""PatchCore-style K-shot baseline: nearest-neighbour distance to the support images' patch features.

No training.  Patch features are the teacher's two deeper stages, each averaged
over a 3×3 neighbourhood, the deeper one upsampled to the shallower one's grid
and concatenated (PatchCore's locally aware features).  With K support images
the memory bank holds all their patches (no coreset subsampling is needed at
this size).  Map = distance of each query patch to its nearest bank patch,
upsampled and smoothed; image score = max of the map.  :class:`PatchCoreFewShot` gives it the few-shot
models' scoring interface (``--method patchcore``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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


@dataclass
class PatchBank:
    """PatchCore-K's support bank: every patch feature of the K supports, (K·h·w)×D."""

    k: int
    patches: torch.Tensor

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"patches": self.patches.contiguous(), "k": torch.tensor(self.k)}


@dataclass
class PatchFeatures:
    """Query patch features (B×D×h×w) and the images' size; slicing gives a batch."""

    features: torch.Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, rows: slice) -> PatchFeatures:
        return PatchFeatures(self.features[rows], self.image_size)

    @classmethod
    def concat(cls, parts: list[PatchFeatures]) -> PatchFeatures:
        return cls(torch.cat([p.features for p in parts]), parts[0].image_size)


class PatchCoreFewShot(nn.Module):
    """PatchCore-K behind the few-shot models' scoring interface (supports, queries, scores), training-free:
    what ``--method patchcore`` scores with, no checkpoint needed."""

    method = "patchcore"

    def __init__(self, teacher: Teacher, sigma: float = DEFAULT_SIGMA) -> None:
        super().__init__()
        self.teacher = teacher
        self.scorer = PatchCoreKShot(teacher, sigma)

    def meta(self) -> dict:
        return {"method": self.method, "teacher": self.teacher.name, "config": {"sigma": self.scorer.sigma}}

    def prepare_supports(self, support_images: torch.Tensor) -> PatchBank:
        if len(support_images) < 1:
            raise ValueError("at least one support image is needed")
        return PatchBank(len(support_images), self.scorer.prepare_supports(support_images))

    @staticmethod
    def supports_from_tensors(tensors: dict[str, torch.Tensor]) -> PatchBank:
        return PatchBank(int(tensors["k"]), tensors["patches"])

    @torch.no_grad()
    def encode_queries(self, images: torch.Tensor) -> PatchFeatures:
        check_finite(images)
        return PatchFeatures(self.scorer.patch_features(images), tuple(images.shape[-2:]))

    def queries_from_teacher(self, teacher_features: list[torch.Tensor], image_size: tuple[int, int]) -> PatchFeatures:
        """Query features from teacher features already computed (by another model with the same teacher)."""
        return PatchFeatures(self.scorer.patch_features_from(teacher_features), image_size)

    @torch.no_grad()
    def score_encoded(self, queries: PatchFeatures, supports: PatchBank
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        maps, scores = self.scorer.score_features(queries.features, supports.patches, queries.image_size)
        return maps, scores, []

    @torch.no_grad()
    def predict(self, images: torch.Tensor, supports: PatchBank) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores, _ = self.score_encoded(self.encode_queries(images), supports)
        return maps, scores
