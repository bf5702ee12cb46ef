"""PatchCore-style K-shot baseline: nearest-neighbour distance to the support images' patch features.

No training.  Patch features are the teacher's two deeper stages, each averaged
over a 3×3 neighbourhood, the deeper one upsampled to the shallower one's grid
and concatenated (PatchCore's locally aware features).  With K support images
the memory bank holds all their patches (no coreset subsampling is needed at
this size).  Map = distance of each query patch to its nearest bank patch,
upsampled and smoothed; image score = max of the map.  :class:`PatchCoreFewShot` gives it (and the options of
:mod:`medad.models.support_scoring`) the few-shot models' scoring interface (``--method patchcore``).
"""

from __future__ import annotations

import torch
from torch import nn

from medad.backbones.base import Teacher
from medad.models.rd4ad import check_finite
from medad.models.support_scoring import (QueryEncoding, SupportBank, SupportScoring, SupportScoringConfig,
                                          flatten_patches, locally_aware_features, nearest_patch_maps)
from medad.scoring import DEFAULT_SIGMA, image_scores


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
        return locally_aware_features(teacher_features)

    @torch.no_grad()
    def prepare_supports(self, support_images: torch.Tensor) -> torch.Tensor:
        check_finite(support_images)
        return flatten_patches(self.patch_features(support_images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_finite(images)
        return self.score_features(self.patch_features(images), bank, tuple(images.shape[-2:]))

    @torch.no_grad()
    def score_features(self, features: torch.Tensor, bank: torch.Tensor, image_size: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and scores from precomputed query patch features (reusable across support sets)."""
        maps = nearest_patch_maps(features, bank, image_size, self.sigma)
        return maps, image_scores(maps, "max")


class PatchCoreFewShot(nn.Module):
    """Training-free K-shot scoring behind the few-shot models' interface (supports, queries, scores), no
    checkpoint needed: PatchCore-K (``--method patchcore``) or, with a :class:`SupportScoringConfig` of options,
    the scorer those options make (:mod:`medad.models.support_scoring`)."""

    def __init__(self, teacher: Teacher, config: SupportScoringConfig | None = None) -> None:
        super().__init__()
        self.teacher = teacher
        self.scorer = SupportScoring(teacher, config)

    @property
    def method(self) -> str:
        return self.scorer.config.method

    def meta(self) -> dict:
        return {"method": self.method, "teacher": self.teacher.name, "config": self.scorer.config.as_dict()}

    def prepare_supports(self, support_images: torch.Tensor) -> SupportBank:
        if len(support_images) < 1:
            raise ValueError("at least one support image is needed")
        check_finite(support_images)
        return self.scorer.prepare_supports(support_images)

    @staticmethod
    def supports_from_tensors(tensors: dict[str, torch.Tensor]) -> SupportBank:
        return SupportBank.from_tensors(tensors)

    @torch.no_grad()
    def encode_queries(self, images: torch.Tensor) -> QueryEncoding:
        check_finite(images)
        return self.scorer.encode(images)

    def queries_from_teacher(self, teacher_features: list[torch.Tensor], image_size: tuple[int, int]) -> QueryEncoding:
        """Query features from teacher features already computed (by another model with the same teacher)."""
        return self.scorer.encoding_from_teacher(teacher_features, image_size)

    @torch.no_grad()
    def score_encoded(self, queries: QueryEncoding, supports: SupportBank
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        maps, scores = self.scorer.score_encoded(queries, supports)
        return maps, scores, []

    @torch.no_grad()
    def predict(self, images: torch.Tensor, supports: SupportBank) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores, _ = self.score_encoded(self.encode_queries(images), supports)
        return maps, scores
