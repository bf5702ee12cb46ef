"""The contract every method keeps: a frozen teacher, learnable parts, metadata and scoring.

``AnomalyModel`` holds the shared defaults; ``OneClassModel`` (trained on one task's normal images,
``predict(images)``) and ``FewShotModel`` (trained episodically on several tasks, scoring queries against
K normal supports) add their kind's interface.  A method subclasses one of them and registers itself with
:func:`medad.models.registry.register_method`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medad.backbones.base import Teacher


class AnomalyModel(nn.Module, ABC):
    """A frozen teacher plus learnable parts; ``config`` is a dataclass of plain JSON values."""

    method: ClassVar[str]
    #: stages each teacher returns (3: strides 4/8/16; 4 adds stride 32)
    teacher_stages: ClassVar[int] = 3
    teacher: Teacher
    config: Any

    @classmethod
    def from_teacher_names(cls, teacher: str, config: Any, teacher_weights: str | Path | None = "imagenet"
                           ) -> AnomalyModel:
        from medad.backbones import build_teacher

        return cls(build_teacher(teacher, weights=teacher_weights, num_stages=cls.teacher_stages), config)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild the model: method, teacher name and config."""
        return {"method": self.method, "teacher": self.teacher.name, "config": asdict(self.config)}

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen teacher (what a checkpoint holds)."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith("teacher.")}

    def load_learnable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.learnable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match this {self.method} configuration (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}): it was saved with other teachers or options")
        self.load_state_dict(state, strict=False)


class OneClassModel(AnomalyModel):
    """Trained on the normal images of one task (or a pool of tasks); scores images on their own."""

    @abstractmethod
    def loss(self, teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """The training loss from (cached) teacher features of a batch of normal images."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B×H×W) and image scores (B) of [0, 1] images."""


class FewShotModel(AnomalyModel):
    """Trained episodically on several tasks; scores queries of an unseen task against K normal supports."""

    @property
    def standardised_scores(self) -> bool:
        """Whether image scores are in units standardised by the supports' own statistics (the 'auto' threshold
        rule depends on it, :func:`medad.engine.thresholds.auto_rule`)."""
        return False

    @abstractmethod
    def loss(self, query_teacher: list[torch.Tensor], support_teacher: list[torch.Tensor]) -> torch.Tensor:
        """The loss of B queries and K supports of one task (teacher features)."""

    @abstractmethod
    def prepare_supports(self, support_images: torch.Tensor) -> Any:
        """What scoring needs from K support images, computed once per support set."""

    @abstractmethod
    def encode_queries(self, images: torch.Tensor) -> Any:
        """Query features that do not depend on the supports (shared across support draws)."""

    @abstractmethod
    def score_encoded(self, queries: Any, supports: Any) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Anomaly maps, image scores and per-scale support weights."""

    @torch.no_grad()
    def predict(self, images: torch.Tensor, supports: Any) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores, _ = self.score_encoded(self.encode_queries(images), supports)
        return maps, scores
