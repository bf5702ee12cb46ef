"""Test-time adaptation for K-shot scoring: a generic student fine-tuned on the K supports, added to support scoring.

A student decoder (RD4AD's, :class:`medad.models.student.Student`) is trained once on the normal images of several
tasks (:func:`train_generic_student`), so that it reconstructs a frozen teacher's features of normal medical images
in general.  On a new task a copy of it is fine-tuned for ``steps`` steps on the K supports and their views
(:func:`adapt_student`), so that it reconstructs this task's normals; where a query is unlike them, its student map
(1 − cosine similarity of teacher and student features, summed over the stages, smoothed) is high.

The image score is the support-scoring term of ``support`` (:mod:`medad.models.support_scoring`, in the units of
the supports' leave-one-out scores) plus ``weight`` times the student's ``score`` of the map, in the units of its
mean over the K supports; the map is the sum of both maps in the same units.  Both terms use the supports.

With a learned few-shot model's student given (``tsd_student``, e.g. the bundled D²4FAD-NN's, trained on other
tasks' normals and never on the supports) and ``tsd_weight`` > 0, a third term is added when K ≤ ``tsd_max_k``:
its teacher→student map, in units of the top-1 % score of the support most similar to the query as a whole (cosine
of the pooled deepest teacher features).  A normal query then scores near 1 against a support of its own kind;
issue 22's round 10 chose it for K = 2 only (docs/METHODS.md).

With ``support_unit="nearest"`` (round 11), the support term of a query is in units of its most similar support's
own leave-one-out support score instead of their mean: a local-density correction, so that a query close to a support
that is itself far from the other supports is not flagged for that alone.
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
from medad.scoring import DEFAULT_SIGMA, anomaly_maps, cosine_distance_map

__all__ = ["AdaptedStudentConfig", "AdaptedStudentFewShot", "AdaptedStudentScoring", "AdaptedSupports",
           "TeacherQueries", "adapt_student", "student_maps", "teacher_features", "train_generic_student"]

#: Adam's betas for generic training and adaptation (RD4AD's)
BETAS = (0.5, 0.999)
#: units of the student term (:class:`AdaptedStudentConfig`)
STUDENT_SCALES = ("supports", "held_out")
#: units of the support term (:class:`AdaptedStudentConfig`)
SUPPORT_UNITS = ("mean", "nearest")


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
    #: weight of a learned model's teacher→student term (module doc; 0: off), used only when K ≤ ``tsd_max_k``
    tsd_weight: float = 0.0
    tsd_max_k: int = 2
    #: the support term's unit: the mean of the supports' leave-one-out scores ("mean"), or the leave-one-out score of
    #: each query's most similar support ("nearest"; K = 1 falls back to "mean")
    support_unit: str = "mean"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {self.steps}")
        if self.weight < 0 or self.tsd_weight < 0:
            raise ValueError(f"weights must be ≥ 0, got {self.weight} and {self.tsd_weight}")
        if self.student_scale not in STUDENT_SCALES:
            raise ValueError(f"student_scale must be one of {', '.join(STUDENT_SCALES)}, got {self.student_scale!r}")
        if self.support_unit not in SUPPORT_UNITS:
            raise ValueError(f"support_unit must be one of {', '.join(SUPPORT_UNITS)}, got {self.support_unit!r}")
        if self.support.global_weight or self.support.positional:
            raise ValueError("the support term of an adapted student takes neither a whole-image term nor a "
                             "positional normalisation")

    @property
    def name(self) -> str:
        scale = "" if self.student_scale == "supports" else f",scale={self.student_scale}"
        tsd = f"+tsd[w={self.tsd_weight:g},k≤{self.tsd_max_k},unit=nearest]" if self.tsd_weight else ""
        unit = "/nearest" if self.support_unit == "nearest" else ""
        return f"{self.support.name}{unit}+student[steps={self.steps},w={self.weight:g}{scale}]{tsd}"

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
def reconstruction_maps(student: nn.Module, features: list[torch.Tensor], image_size: tuple[int, int],
                        sigma: float = DEFAULT_SIGMA, batch_size: int = 32) -> torch.Tensor:
    """Smoothed maps ``B×H×W`` of 1 − cosine similarity between teacher ``features`` and a student's reconstruction
    of them, summed over the stages (computed in batches)."""
    maps = []
    for i in range(0, len(features[0]), batch_size):
        chunk = [f[i:i + batch_size] for f in features]
        maps.append(anomaly_maps([cosine_distance_map(t, z) for t, z in zip(chunk, student(chunk), strict=True)],
                                 image_size, sigma))
    return torch.cat(maps)


def student_maps(model: RD4AD, features: list[torch.Tensor], image_size: tuple[int, int],
                 sigma: float = DEFAULT_SIGMA, batch_size: int = 32) -> torch.Tensor:
    """Smoothed student maps ``B×H×W`` of images whose teacher features are given (computed in batches)."""
    return reconstruction_maps(model.student, features, image_size, sigma, batch_size)


@dataclass
class AdaptedSupports:
    """What scoring needs of one support set: the adapted student, its score scale, and the support bank; with the
    held-out unit, each support's score by a student adapted to the others (``held_out_student``, raw)."""

    model: RD4AD
    student_scale: float
    bank: SupportBank
    held_out_student: torch.Tensor | None = None
    #: each support's teacher→student score, when that term is on for this K (module doc)
    tsd_supports: torch.Tensor | None = None
    #: each support's support term against the other K − 1 (in the bank's units), with the nearest support unit
    support_loo: torch.Tensor | None = None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors (the support cache): the adapted student's state, its scale, the bank (and the held-out
        scores)."""
        tensors = {**{f"student.{key}": value.contiguous() for key, value in self.model.student.state_dict().items()},
                   "student_scale": torch.tensor([self.student_scale]),
                   **{f"bank.{key}": value for key, value in self.bank.to_tensors().items()}}
        for key in ("held_out_student", "tsd_supports", "support_loo"):
            if getattr(self, key) is not None:
                tensors[key] = getattr(self, key).contiguous()
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
                 config: AdaptedStudentConfig | None = None, tsd_student: nn.Module | None = None,
                 tsd_sigma: float = DEFAULT_SIGMA) -> None:
        self.teacher = teacher
        self.generic_state = generic_state
        self.config = config or AdaptedStudentConfig()
        if self.config.tsd_weight and tsd_student is None:
            raise ValueError("tsd_weight > 0 needs the student of a learned few-shot model (tsd_student)")
        self.tsd_student, self.tsd_sigma = tsd_student, tsd_sigma
        self.support_scoring = SupportScoring(teacher, self.config.support)

    def uses_tsd(self, k: int) -> bool:
        """Whether the teacher→student term is on for K supports."""
        return bool(self.config.tsd_weight) and k <= self.config.tsd_max_k

    def tsd_maps(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Smoothed teacher→student maps ``B×H×W`` of ``tsd_student`` from teacher ``features``."""
        return reconstruction_maps(self.tsd_student, features, image_size, self.tsd_sigma)

    @staticmethod
    def nearest_support_units(pooled: torch.Tensor, bank: SupportBank, per_support: torch.Tensor,
                              exclude: int | None = None) -> torch.Tensor:
        """Each query's unit: ``per_support``'s value (one per support) at the support most similar to the query as a
        whole (cosine of pooled deepest teacher features; ``exclude``: a support left out)."""
        similarity = pooled @ bank.pooled[:len(per_support)].T
        if exclude is not None:
            similarity[:, exclude] = -torch.inf
        return per_support[similarity.argmax(dim=1)].clamp_min(1e-6)

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
        tsd = support_loo = None
        if self.uses_tsd(k):
            tsd = reduce_map(self.tsd_maps([stage[:k] for stage in view_features], image_size), self.config.score)
        if self.config.support_unit == "nearest" and k > 1:
            support_loo = self._support_leave_one_out(view_features, k, image_size, bank)
        return AdaptedSupports(model, max(float(scale.mean()), 1e-6), bank, held_out, tsd, support_loo)

    def _support_leave_one_out(self, view_features: list[torch.Tensor], k: int, image_size: tuple[int, int],
                               bank: SupportBank) -> torch.Tensor:
        """Each support's support term against the bank of the other K − 1 supports' views, in ``bank``'s units."""
        owner = torch.arange(k).repeat(len(view_features[0]) // k)
        encoded = SupportScoring.encoding_from_teacher(view_features, image_size)
        terms = []
        for i in range(k):
            others = self.support_scoring.bank_from_views(encoded[owner != i], k - 1)
            maps = self.support_scoring.raw_maps(encoded[i:i + 1], others) / bank.patch_scale
            terms.append(reduce_map(maps, self.config.support.score))
        return torch.cat(terms)

    @torch.no_grad()
    def leave_one_out_scores(self, support_images: torch.Tensor, supports: AdaptedSupports, seed: int = 0
                             ) -> torch.Tensor:
        """Each support's image score as a query of the other K − 1 (its support term against their views' bank,
        its student term by a student adapted to their views), in the units of ``supports`` (prepared from all K):
        how normal images score here, for thresholds.  Reuses ``supports.held_out_student`` and
        ``supports.support_loo`` when they are there.  With the nearest support unit, a support's unit is the
        leave-one-out score of its most similar other support, as computed with all K (the support itself among
        that one's bank)."""
        k, image_size = len(support_images), tuple(support_images.shape[-2:])
        if k < 2:
            raise ValueError("leave-one-out scores need at least 2 support images")
        held_out, support_terms = supports.held_out_student, supports.support_loo
        if held_out is None or support_terms is None:
            view_features = teacher_features(self.teacher,
                                             augment_supports(support_images, self.config.support.augment))
            if held_out is None:
                held_out = self._held_out_scores(view_features, k, image_size, seed)
            if support_terms is None:
                support_terms = self._support_leave_one_out(view_features, k, image_size, supports.bank)
        pooled = supports.bank.pooled

        def units(per_support: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.nearest_support_units(pooled[i:i + 1], supports.bank, per_support, exclude=i)
                              for i in range(k)])

        scores = support_terms / units(support_terms) if supports.support_loo is not None else support_terms
        scores = scores + self.config.weight * held_out / supports.student_scale
        if supports.tsd_supports is not None:
            scores = scores + self.config.tsd_weight * supports.tsd_supports / units(supports.tsd_supports)
        return scores

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
        if supports.support_loo is not None:
            support_maps = support_maps / self.nearest_support_units(queries.pooled, supports.bank,
                                                                     supports.support_loo)[:, None, None]
        maps = student_maps(supports.model, features, image_size) / supports.student_scale
        scores = (reduce_map(support_maps, self.config.support.score)
                  + self.config.weight * reduce_map(maps, self.config.score))
        combined = support_maps + self.config.weight * maps
        if supports.tsd_supports is not None:
            tsd = self.tsd_maps(features, image_size)
            tsd = tsd / self.nearest_support_units(queries.pooled, supports.bank, supports.tsd_supports)[:, None, None]
            scores = scores + self.config.tsd_weight * reduce_map(tsd, self.config.score)
            combined = combined + self.config.tsd_weight * tsd
        return combined, scores

    def predict(self, images: torch.Tensor, supports: AdaptedSupports) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and scores of [0, 1] images against prepared supports."""
        return self.score_features(teacher_features(self.teacher, images), supports, tuple(images.shape[-2:]))



class AdaptedStudentFewShot(nn.Module):
    """:class:`AdaptedStudentScoring` behind the few-shot models' interface (``prepare_supports``,
    ``encode_queries``, ``score_encoded``, ``predict``), for the commands and the web app."""

    method = "adapted_student"

    def __init__(self, teacher: Teacher, generic_state: dict[str, torch.Tensor],
                 config: AdaptedStudentConfig | None = None, tsd_student: nn.Module | None = None,
                 tsd_sigma: float = DEFAULT_SIGMA) -> None:
        super().__init__()
        self.teacher = teacher
        self.tsd_student = tsd_student  # a submodule, so that moving this model moves it too
        self.scorer = AdaptedStudentScoring(teacher, generic_state, config, tsd_student, tsd_sigma)

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
        return AdaptedSupports(model.eval(), float(tensors["student_scale"][0]), bank, tensors.get("held_out_student"),
                               tensors.get("tsd_supports"), tensors.get("support_loo"))

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
