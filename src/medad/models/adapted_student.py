"""Test-time adaptation for K-shot scoring: a generic student fine-tuned on the K supports, added to support scoring.

A student decoder (RD4AD's, :class:`medad.models.student.Student`) is trained once on the normal images of several
tasks (:func:`train_generic_student`), so that it reconstructs a frozen teacher's features of normal medical images
in general.  On a new task a copy of it is fine-tuned for ``steps`` steps on the K supports and their views
(:func:`adapt_student`), so that it reconstructs this task's normals; where a query is unlike them, its student map
(1 − cosine similarity of teacher and student features, summed over the stages, smoothed) is high.

The image score is the support-scoring term of ``support`` (:mod:`medad.models.support_scoring`, in the units of
the supports' leave-one-out scores) plus ``weight`` times the student's ``score`` of the map, in the units of its
mean over the K supports; the map is the sum of both maps in the same units.  Both terms use the supports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from medad.backbones.base import Teacher
from medad.models.rd4ad import RD4AD
from medad.models.support_scoring import (SupportBank, SupportScoring, SupportScoringConfig,
                                          augment_supports, reduce_map)
from medad.scoring import DEFAULT_SIGMA, anomaly_maps

__all__ = ["AdaptedStudentConfig", "AdaptedStudentScoring", "AdaptedSupports", "adapt_student",
           "train_generic_student", "student_maps",
           "teacher_features"]

#: Adam's betas for generic training and adaptation (RD4AD's)
BETAS = (0.5, 0.999)


@dataclass(frozen=True)
class AdaptedStudentConfig:
    """Options of :class:`AdaptedStudentScoring`: fine-tuning steps and learning rate, the student term's weight and
    image score, and the support scoring it is added to."""

    steps: int = 50
    learning_rate: float = 1e-3
    weight: float = 0.5
    score: str = "top1"
    support: SupportScoringConfig = field(default_factory=lambda: SupportScoringConfig(augment="flip+rotate",
                                                                                      score="top1"))

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {self.steps}")
        if self.weight < 0:
            raise ValueError(f"weight must be ≥ 0, got {self.weight}")
        if self.support.global_weight or self.support.positional:
            raise ValueError("the support term of an adapted student takes neither a whole-image term nor a "
                             "positional normalisation")

    @property
    def name(self) -> str:
        return f"{self.support.name}+student[steps={self.steps},w={self.weight:g}]"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, options: dict) -> AdaptedStudentConfig:
        """The config :meth:`as_dict` wrote."""
        return cls(**{**options, "support": SupportScoringConfig(**options["support"])})


def _batches(features: list[torch.Tensor], batch_size: int, generator: torch.Generator) -> Iterator[list[torch.Tensor]]:
    """Endless random batches (with replacement) of rows of per-stage teacher features."""
    while True:
        rows = torch.randint(len(features[0]), (batch_size,), generator=generator)
        yield [stage[rows].float() for stage in features]


def train_generic_student(teacher: Teacher, features: list[torch.Tensor], steps: int, batch_size: int = 16,
                          learning_rate: float = 0.005, seed: int = 0, progress: bool = True) -> dict[str, torch.Tensor]:
    """The state of an RD4AD student trained from scratch on the teacher's features (``features``: one tensor per
    stage, the normal images of several tasks pooled) for ``steps`` steps of ``batch_size`` random images."""
    torch.manual_seed(seed)
    model = RD4AD(teacher)
    optimizer = torch.optim.Adam(model.student.parameters(), lr=learning_rate, betas=BETAS)
    batches = _batches(features, batch_size, torch.Generator().manual_seed(seed))
    model.student.train()
    for _ in tqdm(range(steps), desc="generic student", disable=not progress):
        loss = model.loss(next(batches))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {key: value.detach().clone() for key, value in model.student.state_dict().items()}


def adapt_student(teacher: Teacher, state: dict[str, torch.Tensor], view_features: list[torch.Tensor], steps: int,
                  learning_rate: float, seed: int = 0) -> RD4AD:
    """An RD4AD model whose student starts from ``state`` and is fine-tuned for ``steps`` full-batch steps on the
    teacher features of the support views (in evaluation mode on return)."""
    torch.manual_seed(seed)
    model = RD4AD(teacher)
    model.student.load_state_dict(state)
    optimizer = torch.optim.Adam(model.student.parameters(), lr=learning_rate, betas=BETAS)
    model.student.train()
    for _ in range(steps):
        loss = model.loss(view_features)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def teacher_features(teacher: Teacher, images: torch.Tensor, batch_size: int = 32) -> list[torch.Tensor]:
    """The teacher's per-stage features of images, computed in batches."""
    parts = [teacher(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return [torch.cat(stage) for stage in zip(*parts, strict=True)]


@torch.no_grad()
def student_maps(model: RD4AD, features: list[torch.Tensor], image_size: tuple[int, int],
                 sigma: float = DEFAULT_SIGMA, batch_size: int = 32) -> torch.Tensor:
    """Smoothed student maps ``B×H×W`` of images whose teacher features are given (computed in batches)."""
    return torch.cat([anomaly_maps(model.distance_maps([f[i:i + batch_size] for f in features]), image_size, sigma)
                      for i in range(0, len(features[0]), batch_size)])


@dataclass
class AdaptedSupports:
    """What scoring needs of one support set: the adapted student, its score scale, and the support bank."""

    model: RD4AD
    student_scale: float
    bank: SupportBank


class AdaptedStudentScoring:
    """K-shot scoring by a generic student adapted to the supports, added to support scoring (module doc)."""

    method = "adapted_student"

    def __init__(self, teacher: Teacher, generic_state: dict[str, torch.Tensor],
                 config: AdaptedStudentConfig | None = None) -> None:
        self.teacher = teacher
        self.generic_state = generic_state
        self.config = config or AdaptedStudentConfig()
        self.support_scoring = SupportScoring(teacher, self.config.support)

    def prepare_supports(self, support_images: torch.Tensor, seed: int = 0) -> AdaptedSupports:
        """The student adapted to the supports' views, its scale (mean score over the K supports) and the bank."""
        views = augment_supports(support_images, self.config.support.augment)
        view_features = teacher_features(self.teacher, views)
        model = adapt_student(self.teacher, self.generic_state, view_features, self.config.steps,
                              self.config.learning_rate, seed)
        k = len(support_images)
        originals = [stage[:k] for stage in view_features]
        scale = reduce_map(student_maps(model, originals, tuple(support_images.shape[-2:])), self.config.score)
        bank = self.support_scoring.bank_from_views(
            SupportScoring.encoding_from_teacher(view_features, tuple(support_images.shape[-2:])), k)
        return AdaptedSupports(model, max(float(scale.mean()), 1e-6), bank)

    @torch.no_grad()
    def score_features(self, features: list[torch.Tensor], supports: AdaptedSupports, image_size: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``B×H×W`` and image scores ``B`` of queries from their teacher ``features``."""
        queries = SupportScoring.encoding_from_teacher(features, image_size)
        support_maps = self.support_scoring.score_terms(queries, supports.bank)[0]
        maps = student_maps(supports.model, features, image_size) / supports.student_scale
        scores = (reduce_map(support_maps, self.config.support.score)
                  + self.config.weight * reduce_map(maps, self.config.score))
        return support_maps + self.config.weight * maps, scores

    def predict(self, images: torch.Tensor, supports: AdaptedSupports) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and scores of [0, 1] images against prepared supports."""
        return self.score_features(teacher_features(self.teacher, images), supports, tuple(images.shape[-2:]))

