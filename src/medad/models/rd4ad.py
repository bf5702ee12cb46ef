"""RD4AD (Deng & Li, CVPR 2022): reverse distillation from a frozen teacher into a student decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from medad.backbones.base import Teacher
from medad.models.base import OneClassModel
from medad.models.registry import TrainingDefaults, register_method
from medad.models.student import Student
from medad.scoring import DEFAULT_SIGMA, anomaly_maps, cosine_distance_map, distillation_loss, image_scores


@dataclass
class RD4ADConfig:
    """RD4AD's settings (the paper's defaults; ``loss_mode="flattened"`` = released code).

    ``bottleneck``: ``lean`` (the default, RD4AD's released fusion) or ``standard`` (medad's first, heavier
    one: about 45 % more training FLOPs with WideResNet-50, same accuracy; ``benchmarks/results/speed.md``).
    """

    #: values for checkpoints saved before an option existed (their stored config lacks the key)
    legacy_defaults: ClassVar[dict[str, Any]] = {"bottleneck": "standard"}

    blocks_per_stage: int = 2
    bottleneck: str = "lean"
    loss_mode: str = "per_location"
    score_reduce: str = "max"
    sigma: float = DEFAULT_SIGMA


def check_finite(images: torch.Tensor) -> None:
    if not torch.isfinite(images).all():
        raise ValueError("input batch contains NaN or infinite values; check the images or their preprocessing")


@register_method("rd4ad", kind="one_class", config=RD4ADConfig, default=True,
                 training=TrainingDefaults(epochs=20, batch_size=16),
                 summary="reverse distillation from one frozen teacher into a student decoder (Deng & Li 2022)")
class RD4AD(OneClassModel):
    """Teacher (frozen) → bottleneck → decoder; anomaly = teacher/student disagreement."""

    def __init__(self, teacher: Teacher, config: RD4ADConfig | None = None) -> None:
        super().__init__()
        self.config = config or RD4ADConfig()
        self.teacher = teacher
        self.student = Student(teacher.feature_info, self.config.blocks_per_stage, bottleneck=self.config.bottleneck)

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        # the student's own keys, without a "student." prefix: the layout of every RD4AD checkpoint
        return self.student.state_dict()

    def load_learnable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.student.load_state_dict(state)

    def loss(self, teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """Distillation loss from precomputed (or cached) teacher features."""
        return distillation_loss(teacher_features, self.student(teacher_features), self.config.loss_mode)

    def distance_maps(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [cosine_distance_map(t, s) for t, s in zip(teacher_features, self.student(teacher_features), strict=True)]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B×H×W) and image scores (B) for [0, 1] images."""
        check_finite(images)
        maps = anomaly_maps(self.distance_maps(self.teacher(images)), images.shape[-2:], self.config.sigma)
        return maps, image_scores(maps, self.config.score_reduce)
