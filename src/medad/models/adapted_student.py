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
from torch import nn
from tqdm import tqdm

from medad.backbones.base import Teacher
from medad.device import module_device
from medad.models.rd4ad import RD4AD, check_finite
from medad.models.support_scoring import (SupportBank, SupportScoring, SupportScoringConfig,
                                          augment_supports, reduce_map)
from medad.scoring import DEFAULT_SIGMA, anomaly_maps

__all__ = ["AdaptedStudentConfig", "AdaptedStudentFewShot", "AdaptedStudentScoring", "AdaptedSupports",
           "TeacherQueries", "adapt_student", "student_maps", "teacher_features", "train_generic_student"]

#: Adam's betas for generic training and adaptation (RD4AD's)
BETAS = (0.5, 0.999)
#: units of the student term (:class:`AdaptedStudentConfig`)
STUDENT_SCALES = ("supports", "held_out")


@dataclass(frozen=True)
class AdaptedStudentConfig:
    """Options of :class:`AdaptedStudentScoring`: fine-tuning steps and learning rate, the student term's weight and
    image score, and the support scoring it is added to."""

    steps: int = 50
    learning_rate: float = 1e-3
    weight: float = 0.5
    score: str = "top1"
    #: the student term's unit: its mean over the K supports it was adapted on ("supports"), or over each support
    #: scored by a student adapted to the other K − 1 ("held_out"; K more adaptations, K = 1 falls back to "supports")
    student_scale: str = "supports"
    support: SupportScoringConfig = field(default_factory=lambda: SupportScoringConfig(augment="flip+rotate",
                                                                                      score="top1"))

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {self.steps}")
        if self.weight < 0:
            raise ValueError(f"weight must be ≥ 0, got {self.weight}")
        if self.student_scale not in STUDENT_SCALES:
            raise ValueError(f"student_scale must be one of {', '.join(STUDENT_SCALES)}, got {self.student_scale!r}")
        if self.support.global_weight or self.support.positional:
            raise ValueError("the support term of an adapted student takes neither a whole-image term nor a "
                             "positional normalisation")

    @property
    def name(self) -> str:
        scale = "" if self.student_scale == "supports" else f",scale={self.student_scale}"
        return f"{self.support.name}+student[steps={self.steps},w={self.weight:g}{scale}]"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, options: dict) -> AdaptedStudentConfig:
        """The config :meth:`as_dict` wrote."""
        return cls(**{**options, "support": SupportScoringConfig(**options["support"])})


def _student_model(teacher: Teacher, state: dict[str, torch.Tensor] | None = None) -> RD4AD:
    """An RD4AD model on the teacher's device, its student loaded from ``state`` when given."""
    model = RD4AD(teacher)
    if state is not None:
        model.student.load_state_dict(state)
    return model.to(module_device(teacher))


def _batches(features: list[torch.Tensor], batch_size: int, generator: torch.Generator, device: torch.device
             ) -> Iterator[list[torch.Tensor]]:
    """Endless random batches (with replacement) of rows of per-stage teacher features."""
    while True:
        rows = torch.randint(len(features[0]), (batch_size,), generator=generator)
        yield [stage[rows].float().to(device) for stage in features]


def train_generic_student(teacher: Teacher, features: list[torch.Tensor], steps: int, batch_size: int = 16,
                          learning_rate: float = 0.005, seed: int = 0, progress: bool = True) -> dict[str, torch.Tensor]:
    """The state of an RD4AD student trained from scratch on the teacher's features (``features``: one tensor per
    stage, the normal images of several tasks pooled) for ``steps`` steps of ``batch_size`` random images."""
    torch.manual_seed(seed)
    model = _student_model(teacher)
    optimizer = torch.optim.Adam(model.student.parameters(), lr=learning_rate, betas=BETAS)
    batches = _batches(features, batch_size, torch.Generator().manual_seed(seed), module_device(teacher))
    model.student.train()
    for _ in tqdm(range(steps), desc="generic student", disable=not progress):
        loss = model.loss(next(batches))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {key: value.detach().clone() for key, value in model.student.state_dict().items()}


def load_student(teacher: Teacher, state: dict[str, torch.Tensor]) -> RD4AD:
    """An RD4AD model in evaluation mode whose student is ``state`` (a generic student, not adapted)."""
    return _student_model(teacher, state).eval()


def adapt_student(teacher: Teacher, state: dict[str, torch.Tensor], view_features: list[torch.Tensor], steps: int,
                  learning_rate: float, seed: int = 0) -> RD4AD:
    """An RD4AD model whose student starts from ``state`` and is fine-tuned for ``steps`` full-batch steps on the
    teacher features of the support views (in evaluation mode on return; gradients on even under ``no_grad``)."""
    torch.manual_seed(seed)
    model = _student_model(teacher, state)
    optimizer = torch.optim.Adam(model.student.parameters(), lr=learning_rate, betas=BETAS)
    model.student.train()
    with torch.enable_grad():  # callers may score under no_grad; fine-tuning needs gradients all the same
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
    """What scoring needs of one support set: the adapted student, its score scale, and the support bank; with the
    held-out unit, each support's score by a student adapted to the others (``held_out_student``, raw)."""

    model: RD4AD
    student_scale: float
    bank: SupportBank
    held_out_student: torch.Tensor | None = None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors (the support cache): the adapted student's state, its scale, the bank (and the held-out
        scores)."""
        tensors = {**{f"student.{key}": value.contiguous() for key, value in self.model.student.state_dict().items()},
                   "student_scale": torch.tensor([self.student_scale]),
                   **{f"bank.{key}": value for key, value in self.bank.to_tensors().items()}}
        if self.held_out_student is not None:
            tensors["held_out_student"] = self.held_out_student.contiguous()
        return tensors


@dataclass
class TeacherQueries:
    """Queries as their teacher features (one tensor per stage) and image size: what both terms are computed from."""

    features: list[torch.Tensor]
    image_size: tuple[int, int]

    def __getitem__(self, rows) -> TeacherQueries:
        return TeacherQueries([stage[rows] for stage in self.features], self.image_size)

    def __len__(self) -> int:
        return len(self.features[0])

    @classmethod
    def concat(cls, parts: list[TeacherQueries]) -> TeacherQueries:
        return cls([torch.cat(stage) for stage in zip(*(p.features for p in parts), strict=True)], parts[0].image_size)


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
        k, image_size = len(support_images), tuple(support_images.shape[-2:])
        held_out = None
        if self.config.student_scale == "held_out" and k > 1:
            scale = held_out = self._held_out_scores(view_features, k, image_size, seed)
        else:
            originals = [stage[:k] for stage in view_features]
            scale = reduce_map(student_maps(model, originals, image_size), self.config.score)
        bank = self.support_scoring.bank_from_views(SupportScoring.encoding_from_teacher(view_features, image_size), k)
        return AdaptedSupports(model, max(float(scale.mean()), 1e-6), bank, held_out)

    @torch.no_grad()
    def leave_one_out_scores(self, support_images: torch.Tensor, supports: AdaptedSupports, seed: int = 0
                             ) -> torch.Tensor:
        """Each support's image score as a query of the other K − 1 (its support term against their views' bank,
        its student term by a student adapted to their views), in the units of ``supports`` (prepared from all K):
        how normal images score here, for thresholds.  Reuses ``supports.held_out_student`` when it is there."""
        k, image_size = len(support_images), tuple(support_images.shape[-2:])
        if k < 2:
            raise ValueError("leave-one-out scores need at least 2 support images")
        view_features = teacher_features(self.teacher, augment_supports(support_images, self.config.support.augment))
        held_out = supports.held_out_student
        if held_out is None:
            held_out = self._held_out_scores(view_features, k, image_size, seed)
        owner = torch.arange(k).repeat(len(view_features[0]) // k)
        encoded = SupportScoring.encoding_from_teacher(view_features, image_size)
        support_terms = []
        for i in range(k):
            bank = self.support_scoring.bank_from_views(encoded[owner != i], k - 1)
            maps = self.support_scoring.raw_maps(encoded[i:i + 1], bank) / supports.bank.patch_scale
            support_terms.append(reduce_map(maps, self.config.support.score))
        return torch.cat(support_terms) + self.config.weight * held_out / supports.student_scale

    def _held_out_scores(self, view_features: list[torch.Tensor], k: int, image_size: tuple[int, int], seed: int
                         ) -> torch.Tensor:
        """Each support's student score, by a student adapted to the views of the other K − 1 supports."""
        owner = torch.arange(k).repeat(len(view_features[0]) // k)
        scores = []
        for held_out in range(k):
            others = [stage[owner != held_out] for stage in view_features]
            model = adapt_student(self.teacher, self.generic_state, others, self.config.steps,
                                  self.config.learning_rate, seed)
            own = [stage[held_out:held_out + 1] for stage in view_features]
            scores.append(reduce_map(student_maps(model, own, image_size), self.config.score))
        return torch.cat(scores)

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



class AdaptedStudentFewShot(nn.Module):
    """:class:`AdaptedStudentScoring` behind the few-shot models' interface (``prepare_supports``,
    ``encode_queries``, ``score_encoded``, ``predict``), for the commands and the web app."""

    method = "adapted_student"

    def __init__(self, teacher: Teacher, generic_state: dict[str, torch.Tensor],
                 config: AdaptedStudentConfig | None = None) -> None:
        super().__init__()
        self.teacher = teacher
        self.scorer = AdaptedStudentScoring(teacher, generic_state, config)

    @property
    def config(self) -> AdaptedStudentConfig:
        return self.scorer.config

    def meta(self) -> dict:
        return {"method": self.method, "teacher": self.teacher.name, "config": self.config.as_dict()}

    def prepare_supports(self, support_images: torch.Tensor) -> AdaptedSupports:
        """The student adapted to these supports (seeded: the same supports give the same student)."""
        if len(support_images) < 1:
            raise ValueError("at least one support image is needed")
        check_finite(support_images)
        return self.scorer.prepare_supports(support_images)

    def supports_from_tensors(self, tensors: dict[str, torch.Tensor]) -> AdaptedSupports:
        """Supports saved with :meth:`AdaptedSupports.to_tensors`."""
        model = _student_model(self.teacher, {key[len("student."):]: value for key, value in tensors.items()
                                              if key.startswith("student.")})
        bank = SupportBank.from_tensors({key[len("bank."):]: value for key, value in tensors.items()
                                         if key.startswith("bank.")})
        return AdaptedSupports(model.eval(), float(tensors["student_scale"][0]), bank, tensors.get("held_out_student"))

    def leave_one_out_scores(self, support_images: torch.Tensor, supports: AdaptedSupports | None = None
                             ) -> list[float]:
        """Each support's score against the other K − 1 (:meth:`AdaptedStudentScoring.leave_one_out_scores`),
        from ``supports`` already prepared from these images when given (no second adaptation)."""
        check_finite(support_images)
        supports = supports if supports is not None else self.prepare_supports(support_images)
        return self.scorer.leave_one_out_scores(support_images, supports).tolist()

    @torch.no_grad()
    def encode_queries(self, images: torch.Tensor) -> TeacherQueries:
        check_finite(images)
        return TeacherQueries(teacher_features(self.teacher, images), tuple(images.shape[-2:]))

    @staticmethod
    def queries_from_teacher(teacher_features: list[torch.Tensor], image_size: tuple[int, int]) -> TeacherQueries:
        """Query features from teacher features already computed (by another model with the same teacher)."""
        return TeacherQueries(teacher_features, image_size)

    @torch.no_grad()
    def score_encoded(self, queries: TeacherQueries, supports: AdaptedSupports
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        maps, scores = self.scorer.score_features(queries.features, supports, queries.image_size)
        return maps, scores, []

    @torch.no_grad()
    def predict(self, images: torch.Tensor, supports: AdaptedSupports) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores, _ = self.score_encoded(self.encode_queries(images), supports)
        return maps, scores
