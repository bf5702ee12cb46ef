"""D²4FAD (Dong et al.): dual distillation + learn-to-weight for few-shot anomaly detection.

A frozen teacher and a student decoder (RD4AD's bottleneck + decoder).  Training
(normal images only, episodic): teacher→student distillation on the query
(Eq. 1) and student self-distillation between the query and K support images of
the same task (Eq. 2), the supports weighted per query by learn-to-weight
(Eq. 4–5); objective λ·L_tsd + L_ssd (Eq. 3/6), λ = 0.1.  Scoring (Sec. 2.4):
the per-location map of Eq. 5 between the query's and the weighted supports'
student features, summed over scales, Gaussian-smoothed per image, averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medad.backbones.base import FeatureStage, Teacher
from medad.models.base import FewShotModel
from medad.models.rd4ad import check_finite
from medad.models.registry import TrainingDefaults, register_method
from medad.models.student import Student
from medad.scoring import DEFAULT_SIGMA, anomaly_maps, cosine_distance_map, distillation_loss, image_scores

WEIGHTINGS = ("l2w", "uniform", "gaussian", "embedded_gaussian", "concatenation")


@dataclass
class D24FADConfig:
    """Switches for the paper's ablations (Table 2) and weighting variants (Appendix F)."""

    blocks_per_stage: int = 2
    lambda_tsd: float = 0.1
    use_tsd: bool = True
    use_ssd: bool = True
    weighting: str = "l2w"
    loss_mode: str = "per_location"
    score_reduce: str = "mean"
    sigma: float = DEFAULT_SIGMA

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if not (self.use_tsd or self.use_ssd):
            raise ValueError("at least one of use_tsd and use_ssd must be on")


class SupportWeighting(nn.Module):
    """Per-query softmax weights over K supports at one scale (Eq. 4 and Appendix F).

    ``l2w``: softmax(z_q · φ(z_s)ᵀ / √C) with features flattened to C·H·W, φ a 1×1 conv.
    ``gaussian``: softmax(z_q · z_sᵀ); ``embedded_gaussian``: softmax(θ(z_q) · φ(z_s)ᵀ)
    (the softmax is the Gaussian's normalised exponential, as in non-local blocks).
    ``concatenation``: softmax(ReLU(wᵀ[θ(z_q), φ(z_s)])), wᵀ applied per location and
    averaged over locations so that it does not depend on the image size.
    ``uniform``: 1/K (Eq. 2).
    """

    def __init__(self, stage: FeatureStage, kind: str) -> None:
        super().__init__()
        self.kind = kind
        channels = stage.channels
        self.scale = 1.0 / math.sqrt(channels)
        self.phi = nn.Conv2d(channels, channels, 1) if kind in ("l2w", "embedded_gaussian", "concatenation") else None
        self.theta = nn.Conv2d(channels, channels, 1) if kind in ("embedded_gaussian", "concatenation") else None
        self.w = nn.Conv2d(2 * channels, 1, 1) if kind == "concatenation" else None

    def project_supports(self, supports: torch.Tensor) -> torch.Tensor:
        """The support-side projection (cacheable once per support set)."""
        return self.phi(supports) if self.phi is not None else supports

    def forward(self, queries: torch.Tensor, supports: torch.Tensor,
                projected_supports: torch.Tensor | None = None) -> torch.Tensor:
        """B×C×H×W queries, K×C×H×W supports → B×K weights (rows sum to 1)."""
        batch, k = queries.shape[0], supports.shape[0]
        if self.kind == "uniform":
            return queries.new_full((batch, k), 1.0 / k)
        keys = self.project_supports(supports) if projected_supports is None else projected_supports
        if self.kind == "concatenation":
            q = self.theta(queries).unsqueeze(1).expand(-1, k, -1, -1, -1)
            s = keys.unsqueeze(0).expand(batch, -1, -1, -1, -1)
            pair = torch.cat([q, s], dim=2).flatten(0, 1)
            logits = F.relu(self.w(pair)).mean(dim=(1, 2, 3)).view(batch, k)
            return logits.softmax(dim=1)
        q = self.theta(queries) if self.theta is not None else queries
        logits = q.flatten(1) @ keys.flatten(1).T
        if self.kind == "l2w":
            logits = logits * self.scale
        return logits.softmax(dim=1)


@dataclass
class SupportFeatures:
    """Student features of a support set (and their projections), computed once per task."""

    student: list[torch.Tensor]
    projected: list[torch.Tensor]

    @property
    def k(self) -> int:
        return self.student[0].shape[0]

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"student{i}": z.contiguous() for i, z in enumerate(self.student)}
        return {**tensors, **{f"projected{i}": p.contiguous() for i, p in enumerate(self.projected)}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SupportFeatures:
        scales = len(tensors) // 2
        return cls([tensors[f"student{i}"] for i in range(scales)], [tensors[f"projected{i}"] for i in range(scales)])


@register_method("d24fad", kind="few_shot", config=D24FADConfig,
                 training=TrainingDefaults(epochs=10, batch_size=16, max_queries_per_task=256),
                 summary="the paper's model (Dong et al.), kept for reproduction; d24fad_nn replaces it")
class D24FAD(FewShotModel):
    """Frozen teacher, student decoder and one support weighting per scale."""

    def __init__(self, teacher: Teacher, config: D24FADConfig | None = None) -> None:
        super().__init__()
        self.config = config or D24FADConfig()
        self.teacher = teacher
        self.student = Student(teacher.feature_info, self.config.blocks_per_stage)
        self.weighting = nn.ModuleList([SupportWeighting(stage, self.config.weighting) for stage in teacher.feature_info])

    # ----- shared pieces -------------------------------------------------------------------------
    def support_distance_maps(self, query_student: list[torch.Tensor], supports: SupportFeatures
                              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-scale B×h×w maps of Eq. 5 (or Eq. 2 when uniform) and the B×K weights per scale."""
        maps, weights = [], []
        for weighting, zq, zs, projected in zip(self.weighting, query_student, supports.student, supports.projected, strict=True):
            w = weighting(zq, zs, projected)
            if self.config.weighting == "uniform":
                distance = torch.stack([cosine_distance_map(zq, support.expand_as(zq)) for support in zs]).mean(0)
            else:
                combined = torch.einsum("bk,kchw->bchw", w, zs)
                distance = cosine_distance_map(combined, zq)
            maps.append(distance)
            weights.append(w)
        return maps, weights

    def encode_supports(self, support_teacher: list[torch.Tensor]) -> SupportFeatures:
        student = self.student(support_teacher)
        projected = [weighting.project_supports(z) for weighting, z in zip(self.weighting, student, strict=True)]
        return SupportFeatures(student, projected)

    # ----- training ------------------------------------------------------------------------------
    def loss(self, query_teacher: list[torch.Tensor], support_teacher: list[torch.Tensor]) -> torch.Tensor:
        """λ·L_tsd + L_ssd(-l2w) for B queries and K supports of the same task (teacher features)."""
        batch = query_teacher[0].shape[0]
        joint = self.student([torch.cat([q, s]) for q, s in zip(query_teacher, support_teacher, strict=True)])
        query_student = [z[:batch] for z in joint]
        support_student = [z[batch:] for z in joint]
        total = query_teacher[0].new_zeros(())
        if self.config.use_tsd:
            tsd = distillation_loss(query_teacher, query_student, self.config.loss_mode)
            total = total + (self.config.lambda_tsd if self.config.use_ssd else 1.0) * tsd
        if self.config.use_ssd:
            supports = SupportFeatures(support_student,
                                       [w.project_supports(z) for w, z in zip(self.weighting, support_student, strict=True)])
            maps, _ = self.support_distance_maps(query_student, supports)
            total = total + torch.stack([m.mean() for m in maps]).sum()
        return total

    # ----- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_supports(self, support_images: torch.Tensor) -> SupportFeatures:
        """Student features of K support images, to be reused for every query of the task."""
        check_finite(support_images)
        if support_images.shape[0] < 1:
            raise ValueError("at least one support image is needed")
        return self.encode_supports(self.teacher(support_images))

    @staticmethod
    def supports_from_tensors(tensors: dict[str, torch.Tensor]) -> SupportFeatures:
        """A support set saved with ``SupportFeatures.to_tensors`` (the support cache of ``fewshot score``)."""
        return SupportFeatures.from_tensors(tensors)

    @torch.no_grad()
    def encode_queries(self, images: torch.Tensor) -> QueryFeatures:
        """Teacher and student features of query images (independent of the support set)."""
        check_finite(images)
        teacher = self.teacher(images)
        return QueryFeatures(teacher, self.student(teacher), tuple(images.shape[-2:]))

    @torch.no_grad()
    def score_encoded(self, queries: QueryFeatures, supports: SupportFeatures
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Anomaly maps (B×H×W), image scores (B) and per-scale support weights (B×K each)."""
        if self.config.use_ssd:
            distances, weights = self.support_distance_maps(queries.student, supports)
        else:
            distances = [cosine_distance_map(t, z) for t, z in zip(queries.teacher, queries.student, strict=True)]
            weights = []
        maps = anomaly_maps(distances, queries.image_size, self.config.sigma)
        return maps, image_scores(maps, self.config.score_reduce), weights

    def predict_with_weights(self, images: torch.Tensor, supports: SupportFeatures
                             ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return self.score_encoded(self.encode_queries(images), supports)


@dataclass
class QueryFeatures:
    """Teacher and student features of N query images; slicing gives a batch."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return self.student[0].shape[0]

    @classmethod
    def concat(cls, parts: list[QueryFeatures]) -> QueryFeatures:
        return cls([torch.cat([p.teacher[i] for p in parts]) for i in range(len(parts[0].teacher))],
                   [torch.cat([p.student[i] for p in parts]) for i in range(len(parts[0].student))],
                   parts[0].image_size)

    def __getitem__(self, rows: slice) -> QueryFeatures:
        return QueryFeatures([t[rows] for t in self.teacher], [z[rows] for z in self.student], self.image_size)
