"""PDD (Lu et al.): manifold-prior diverse distillation with two teachers and two students.

Pipeline (paper Section 3; the choices the paper leaves open are listed in docs/METHODS.md, "PDD"):

* **Teachers.** One frozen :class:`~medad.backbones.pair.TeacherPair` returns four stages (strides
  4/8/16/32) of teacher 1 (the CNN, WideResNet-50's role) followed by four of teacher 2 (VMamba's
  role).  Stages 1–3 feed InA, stage 4 (the deepest) feeds MMU.
* **InA** (Eq. 1–2): ``f_b^i = t1^i + U(P_i t2^i)`` for i = 1…3, U = bilinear resize to teacher 1's
  map, ``P_i`` a *fixed* seeded random orthogonal 1×1 projection from teacher 2's to teacher 1's
  channels (a buffer, identity where the channel counts agree).  The ``f_b`` are the students'
  distillation targets; they depend only on frozen teacher features and fixed buffers and are
  computed without gradient, so they cannot collapse during training.
* **MMU** (Eq. 3–4): ``f_t = t1^4 + U(C3(GELU(BN(C1(t2^4)))) + C1(t2^4))`` — C1 a 1×1 conv from
  teacher 2's to teacher 1's deepest channels, C3 a 3×3 conv; learned.  ``f_t`` is the input of both
  students.
* **Students**: two decoders of the same structure (``medad.models.student.Decoder``), each preceded
  by its own compress layer (two residual blocks at stride 32, as ``student.Bottleneck``'s compression)
  that plays the bottleneck's role (option ``student_input="ocbe"``: RD4AD's multi-scale fusion of the
  three InA targets and ``f_t``).  Student 1 reconstructs the InA targets (``L_kr``, Eq. 5).  Student 2 adds
  MPA (Eq. 6): per decoder stage an affine 1×1 conv of ``f_t`` resized to that stage and added after
  the stage's up-sampling (skip connection); loss ``L_prp`` (Eq. 7).
* **Diversity** (Eq. 8): per location, ``max(0, cos(s1, s2) − τ_low)`` on the first
  ``div_low_layers`` stages and ``max(0, τ_high − cos(s1, s2))`` on the others.
* **Total** (Eq. 9): ``λ_kr L_kr + λ_prp L_prp + λ_div L_div``.
* **Score** (Sec. 4.4): map = Σ_stages (1 − cos(f_b, s1)) + (1 − cos(f_b, s2)), upsampled, Gaussian
  σ = 4 per image; image score = max (or mean).

Ablation switches (Tables 3 and 4): ``dual_teacher``, ``students``, ``use_div``, ``score_map``; see
:data:`ABLATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medad.backbones.base import FeatureStage, Teacher
from medad.backbones.pair import TeacherPair
from medad.models.base import OneClassModel
from medad.models.registry import TrainingDefaults, register_method
from medad.models.rd4ad import check_finite
from medad.models.student import (
    BOTTLENECK_WIDTH,
    Decoder,
    ResidualBlock,
    conv_bn_relu,
    downsampler,
    resize_to,
)
from medad.scoring import DEFAULT_SIGMA, anomaly_maps, cosine_distance_map, image_scores

STUDENTS = ("s1", "s2", "both")
SCORE_MAPS = ("teacher_student", "student_student")
MSE_SCALES = ("target", "none")
STUDENT_INPUTS = ("unified", "ocbe")
LOSS_NORMALISATIONS = ("init", "none")
#: the terms of Eq. 9, in the order of the ``loss_reference`` buffer
LOSS_TERMS = ("kr", "prp", "div")
NUM_TEACHER_STAGES = 4  # strides 4/8/16/32: stages 1–3 → InA targets, stage 4 → MMU

#: benchmark label → PDDConfig overrides (Table 3: 1t1s, 2t1s, 2t1s+mpa, 2t2s; Table 4: s-s-map, no-div)
ABLATIONS: dict[str, dict] = {
    "2t2s": {},
    "1t1s": {"dual_teacher": False, "students": "s1"},
    "1t1s+mpa": {"dual_teacher": False, "students": "s2"},
    "2t1s": {"students": "s1"},
    "2t1s+mpa": {"students": "s2"},
    "s-s-map": {"score_map": "student_student"},
    "s-s-map+no-div": {"score_map": "student_student", "use_div": False},
    "no-div": {"use_div": False},
}


@dataclass
class PDDConfig:
    """PDD's settings: the paper's values where it gives them (Sec. 4.1/4.3), documented choices otherwise.

    Every field is a plain JSON value: the config is stored in the checkpoint and restored by
    ``medad.models.factory.build_model``.
    """

    dual_teacher: bool = True          # False: teacher 1 only, no InA/MMU (Table 3 "1t1s")
    students: str = "both"             # "s1" (Student 1, L_kr), "s2" (Student 2 with MPA, L_prp) or "both"
    use_div: bool = True               # L_div (Eq. 8) between the students (only with both students)
    score_map: str = "teacher_student"  # or "student_student": 1 − cos(s1, s2) (Table 4 M1/M2)
    lambda_kr: float = 0.02            # Eq. 9 / Sec. 4.3
    lambda_prp: float = 0.02
    lambda_div: float = 0.5
    alpha: float = 1.0                 # Eq. 7 weights (the paper gives no values)
    beta: float = 1.0
    tau_low: float = 0.30              # Sec. 4.3
    tau_high: float = 0.75
    div_low_layers: int = 1            # L_low of Eq. 8: stages 1…L_low are "low", the rest "high"
    mse_scale: str = "target"          # "target": MSE / mean(f_b²) per stage (backbone-independent); "none": raw MSE
    loss_normalisation: str = "init"   # "init": each term of Eq. 9 in units of its value at initialisation; "none"
    student_input: str = "unified"     # "unified": f_t only; "ocbe": RD4AD's fusion of f_b^1..3 and f_t
    embedding_channels: int | None = None  # compress-layer width; None = teacher 1's deepest channels
    blocks_per_stage: int = 2
    projection_seed: int = 0           # seed of InA's fixed orthogonal projections
    score_reduce: str = "max"
    sigma: float = DEFAULT_SIGMA

    #: checkpoints saved before an option existed were trained without it
    legacy_defaults: ClassVar[dict[str, Any]] = {"loss_normalisation": "none"}

    def __post_init__(self) -> None:
        if self.students not in STUDENTS:
            raise ValueError(f"students must be one of {STUDENTS}, got {self.students!r}")
        if self.score_map not in SCORE_MAPS:
            raise ValueError(f"score_map must be one of {SCORE_MAPS}, got {self.score_map!r}")
        if self.score_map == "student_student" and self.students != "both":
            raise ValueError("score_map='student_student' compares the two students: it needs students='both'")
        if self.mse_scale not in MSE_SCALES:
            raise ValueError(f"mse_scale must be one of {MSE_SCALES}, got {self.mse_scale!r}")
        if self.loss_normalisation not in LOSS_NORMALISATIONS:
            raise ValueError(f"loss_normalisation must be one of {LOSS_NORMALISATIONS}, got {self.loss_normalisation!r}")
        if self.student_input not in STUDENT_INPUTS:
            raise ValueError(f"student_input must be one of {STUDENT_INPUTS}, got {self.student_input!r}")
        if self.score_reduce not in ("max", "mean"):
            raise ValueError(f"score_reduce must be 'max' or 'mean', got {self.score_reduce!r}")
        if not -1.0 <= self.tau_low <= 1.0 or not -1.0 <= self.tau_high <= 1.0:
            raise ValueError("tau_low and tau_high are cosine thresholds in [-1, 1]")
        if min(self.lambda_kr, self.lambda_prp, self.lambda_div, self.alpha, self.beta) < 0:
            raise ValueError("loss weights (lambda_*, alpha, beta) must be ≥ 0")
        if self.div_low_layers < 0:
            raise ValueError("div_low_layers must be ≥ 0")

    @classmethod
    def ablation(cls, name: str, **overrides) -> PDDConfig:
        """The config of a named ablation row (:data:`ABLATIONS`), plus ``overrides``."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown PDD ablation {name!r}; known: {', '.join(ABLATIONS)}")
        return cls(**{**ABLATIONS[name], **overrides})

    @property
    def uses_s1(self) -> bool:
        return self.students in ("s1", "both")

    @property
    def uses_s2(self) -> bool:
        return self.students in ("s2", "both")


def fixed_projection(in_channels: int, out_channels: int, generator: torch.Generator) -> torch.Tensor:
    """A seeded random orthogonal out×in matrix (identity when the counts agree).

    More output than input channels: orthonormal columns (an isometry).  Fewer: orthonormal rows
    scaled by √(in/out), so an isotropic input keeps its expected squared norm.
    """
    if in_channels == out_channels:
        return torch.eye(out_channels)
    big, small = max(in_channels, out_channels), min(in_channels, out_channels)
    q, r = torch.linalg.qr(torch.randn(big, small, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR (positive diagonal of R)
    if out_channels > in_channels:
        return q.float()  # out×in, orthonormal columns
    return (q.T * (in_channels / out_channels) ** 0.5).float()  # out×in, orthonormal rows, rescaled


class InA(nn.Module):
    """Inter-level feature adaptation (Eq. 1–2) with fixed projections: ``f_b = t1 + U(P t2)``."""

    def __init__(self, first: list[FeatureStage], second: list[FeatureStage], seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.num_stages = len(first)
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            self.register_buffer(f"projection{index}", fixed_projection(b.channels, a.channels, generator))

    def projections(self) -> list[torch.Tensor]:
        return [getattr(self, f"projection{index}") for index in range(self.num_stages)]

    @torch.no_grad()
    def forward(self, first: list[torch.Tensor], second: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = []
        for projection, t1, t2 in zip(self.projections(), first, second, strict=True):
            projected = torch.einsum("oc,bchw->bohw", projection.to(t2.dtype), t2)
            fused.append(t1 + resize_to(projected, t1))
        return fused


class MMU(nn.Module):
    """Manifold matching and unification (Eq. 3–4): ``f_t = t1 + U(C3(GELU(BN(C1 t2))) + C1 t2)``."""

    def __init__(self, second_channels: int, first_channels: int) -> None:
        super().__init__()
        self.adapt = nn.Conv2d(second_channels, first_channels, 1)  # C^1: channel adaptation
        self.norm = nn.BatchNorm2d(first_channels)
        self.activation = nn.GELU()
        self.spatial = nn.Conv2d(first_channels, first_channels, 3, padding=1)  # C^3

    def forward(self, first_deep: torch.Tensor, second_deep: torch.Tensor) -> torch.Tensor:
        adapted = self.adapt(second_deep)
        adapted = adapted + self.spatial(self.activation(self.norm(adapted)))  # Res(·, C^1(f_m))
        return first_deep + resize_to(adapted, first_deep)


class PDDStudent(nn.Module):
    """Bottleneck + decoder; with ``prior`` the MPA skip projections (Eq. 6).

    The bottleneck sees ``f_t`` only (``fuse_targets=False``: two residual blocks at stride 32, the first
    a 3×3 conv-BN-ReLU below ``student.BOTTLENECK_WIDTH`` channels, as in ``student.Bottleneck``), or
    RD4AD's multi-scale fusion of the three InA targets and ``f_t`` (``fuse_targets=True``: each target
    brought to stride 32 by strided 3×3 convs, concatenated with ``f_t``, then compressed).
    """

    def __init__(self, in_channels: int, stages: list[FeatureStage], embedding_channels: int,
                 blocks_per_stage: int = 2, prior: bool = False, fuse_targets: bool = False) -> None:
        super().__init__()
        deep_stride = 2 * stages[-1].stride  # the unified feature's stride (teacher stage 4)
        self.align = (nn.ModuleList([downsampler(stage.channels, in_channels, deep_stride // stage.stride)
                                     for stage in stages]) if fuse_targets else None)
        fused_channels = in_channels * (len(stages) + 1) if fuse_targets else in_channels
        first = (ResidualBlock(fused_channels, embedding_channels) if embedding_channels >= BOTTLENECK_WIDTH
                 else conv_bn_relu(fused_channels, embedding_channels))  # as student.Bottleneck, at stride 1
        self.compress = nn.Sequential(first, ResidualBlock(embedding_channels))
        self.decoder = Decoder(stages, embedding_channels, blocks_per_stage)
        self.mpa = nn.ModuleList([nn.Conv2d(in_channels, stage.channels, 1) for stage in stages]) if prior else None

    def forward(self, unified: torch.Tensor, targets: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        priors = [affine(unified) for affine in self.mpa] if self.mpa is not None else None
        x = unified
        if self.align is not None:
            aligned = [resize_to(align(target), unified) for align, target in zip(self.align, targets, strict=True)]
            x = torch.cat([*aligned, unified], dim=1)
        return self.decoder(self.compress(x), priors)


@register_method("pdd", kind="one_class", config=PDDConfig, teachers=2,
                 training=TrainingDefaults(epochs=20, batch_size=16, cosine_schedule=True),
                 summary="two frozen teachers fused (InA, MMU) and distilled into two diverse students (Lu et al.)")
class PDD(OneClassModel):
    """Dual teachers (frozen) → InA targets + MMU unified feature → two students; anomaly = T–S disagreement."""

    teacher_stages = NUM_TEACHER_STAGES

    def __init__(self, teacher: Teacher, config: PDDConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PDDConfig()
        self.teacher = teacher
        if isinstance(teacher, TeacherPair):
            first_info, second_info = teacher.first_info, teacher.second_info
        elif config.dual_teacher:
            raise ValueError(f"PDD needs two teachers: build it with a TeacherPair / teacher name 'first+second' "
                             f"(got the single teacher {teacher.name}); only the 1t1s ablation "
                             f"(dual_teacher=false) runs on one teacher")
        else:
            first_info, second_info = list(teacher.feature_info), None
        for info, which in ((first_info, "teacher 1"), (second_info, "teacher 2")):
            if info is not None and len(info) != NUM_TEACHER_STAGES:
                raise ValueError(f"PDD uses 4 stages of each teacher (strides 4/8/16/32: stages 1–3 are the InA "
                                 f"targets, stage 4 feeds MMU) but {which} has {len(info)}; build the teachers "
                                 f"with num_stages=4")
        self.target_info = first_info[:3]
        if config.div_low_layers > len(self.target_info):
            raise ValueError(f"div_low_layers={config.div_low_layers} exceeds the {len(self.target_info)} target stages")
        deep_channels = first_info[3].channels
        embedding = config.embedding_channels or deep_channels
        if config.dual_teacher:
            self.ina = InA(first_info[:3], second_info[:3], config.projection_seed)
            self.mmu = MMU(second_info[3].channels, deep_channels)
        else:
            self.ina = None
            self.mmu = None
        fuse = config.student_input == "ocbe"
        self.student1 = (PDDStudent(deep_channels, self.target_info, embedding, config.blocks_per_stage,
                                    fuse_targets=fuse) if config.uses_s1 else None)
        self.student2 = (PDDStudent(deep_channels, self.target_info, embedding, config.blocks_per_stage, prior=True,
                                    fuse_targets=fuse) if config.uses_s2 else None)
        if config.loss_normalisation == "init":  # NaN until the first training batch measures it (kept in checkpoints)
            self.register_buffer("loss_reference", torch.full((len(LOSS_TERMS),), float("nan")))

    # --- construction / checkpoints -------------------------------------------------------------------------------

    @classmethod
    def from_teacher_names(cls, teacher: str, config: PDDConfig, teacher_weights) -> PDD:
        from medad.backbones import build_teacher
        from medad.backbones.pair import build_teacher_pair

        if "+" in teacher:
            return cls(build_teacher_pair(teacher, teacher_weights, num_stages=NUM_TEACHER_STAGES), config)
        if config.dual_teacher:
            raise ValueError(f"PDD needs two teachers as 'first+second' (e.g. 'wide_resnet50_2+vmamba_tiny' or "
                             f"'efficientnet_lite0+efficientnet_lite2'), got {teacher!r}; a single teacher only "
                             f"works for the 1t1s ablation (model option dual_teacher=false)")
        return cls(build_teacher(teacher, weights=teacher_weights, num_stages=NUM_TEACHER_STAGES), config)

    # --- features -------------------------------------------------------------------------------------------------

    def _split(self, teacher_features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        if isinstance(self.teacher, TeacherPair):
            first, second = self.teacher.split(teacher_features)
        else:
            first, second = list(teacher_features), None
            if len(first) != NUM_TEACHER_STAGES:
                raise ValueError(f"PDD expects {NUM_TEACHER_STAGES} teacher feature maps, got {len(first)}")
        return first, (second if self.config.dual_teacher else None)

    def targets(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """InA's fused stage 1–3 features f_b (teacher 1's own stages in the 1t1s ablation); never trained."""
        first, second = self._split(teacher_features)
        if self.ina is None:
            return [feature.detach() for feature in first[:3]]
        return [feature.detach() for feature in self.ina(first[:3], second[:3])]

    def unified(self, teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """MMU's unified deepest feature f_t (teacher 1's stage 4 in the 1t1s ablation): the students' input."""
        first, second = self._split(teacher_features)
        if self.mmu is None:
            return first[3]
        return self.mmu(first[3], second[3])

    def students(self, unified: torch.Tensor, targets: list[torch.Tensor] | None = None) -> dict[str, list[torch.Tensor]]:
        """Student outputs (shallow → deep) by name; ``targets`` are needed with ``student_input="ocbe"``."""
        if self.config.student_input == "ocbe" and targets is None:
            raise ValueError("student_input='ocbe' feeds the InA targets to the students: pass targets")
        outputs = {}
        if self.student1 is not None:
            outputs["s1"] = self.student1(unified, targets)
        if self.student2 is not None:
            outputs["s2"] = self.student2(unified, targets)
        return outputs

    # --- losses -----------------------------------------------------------------------------------------------------

    def _mse(self, target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        error = (prediction - target).pow(2).mean()
        if self.config.mse_scale == "target":
            error = error / target.pow(2).mean().clamp_min(1e-12)
        return error

    def kr_loss(self, targets: list[torch.Tensor], s1: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 5: Σ_i MSE(f_b^i, s1^i)."""
        return sum(self._mse(t, s) for t, s in zip(targets, s1, strict=True))

    def prp_loss(self, targets: list[torch.Tensor], s2: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 7: Σ_i α·MSE(f_b^i, s2^i) + β·mean(1 − cos(f_b^i, s2^i)) (cosine per location)."""
        return sum(self.config.alpha * self._mse(t, s) + self.config.beta * cosine_distance_map(t, s).mean()
                   for t, s in zip(targets, s2, strict=True))

    def div_loss(self, s1: list[torch.Tensor], s2: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 8 per location: max(0, cos − τ_low) on the low stages, max(0, τ_high − cos) on the high ones."""
        total = s1[0].new_zeros(())
        for index, (a, b) in enumerate(zip(s1, s2, strict=True)):
            cosine = F.cosine_similarity(a, b, dim=1)
            if index < self.config.div_low_layers:
                total = total + torch.relu(cosine - self.config.tau_low).mean()
            else:
                total = total + torch.relu(self.config.tau_high - cosine).mean()
        return total

    def div_reference(self) -> float:
        """L_div for uncorrelated students (cos = 0 everywhere): its expected value at initialisation (1 if that is 0)."""
        low = min(self.config.div_low_layers, len(self.target_info))
        value = low * max(0.0, -self.config.tau_low) + (len(self.target_info) - low) * max(0.0, self.config.tau_high)
        return value if value > 0 else 1.0

    def _reference(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each term's unit under ``loss_normalisation="init"``, measured on the first batch the loss sees.

        L_kr and L_prp: their values on that batch (the students' initial error); L_div: :meth:`div_reference`.
        Stored in the ``loss_reference`` buffer, so a resumed run uses the units of its first batch.
        """
        reference = self.loss_reference
        if torch.isnan(reference).any():
            units = [self.div_reference() if name == "div" else
                     float(terms[name].detach().clamp_min(1e-12)) if name in terms else 1.0 for name in LOSS_TERMS]
            reference.copy_(torch.tensor(units))
        return {name: reference[index] for index, name in enumerate(LOSS_TERMS)}

    def loss_reference_values(self) -> dict[str, float] | None:
        """The measured units of the terms (None without ``loss_normalisation="init"`` or before the first batch)."""
        reference = getattr(self, "loss_reference", None)
        if reference is None or torch.isnan(reference).any():
            return None
        return {name: float(value) for name, value in zip(LOSS_TERMS, reference.tolist(), strict=True)}

    def loss_terms(self, teacher_features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The raw terms of Eq. 9 (those the configuration uses) and, under ``"total"``, Eq. 9 itself with each
        term divided by its unit (:meth:`_reference`) under ``loss_normalisation="init"``."""
        config = self.config
        targets = self.targets(teacher_features)
        outputs = self.students(self.unified(teacher_features), targets)
        terms: dict[str, torch.Tensor] = {}
        if "s1" in outputs:
            terms["kr"] = self.kr_loss(targets, outputs["s1"])
        if "s2" in outputs:
            terms["prp"] = self.prp_loss(targets, outputs["s2"])
        if config.use_div and "s1" in outputs and "s2" in outputs:
            terms["div"] = self.div_loss(outputs["s1"], outputs["s2"])
        units = self._reference(terms) if config.loss_normalisation == "init" else {}
        weights = {"kr": config.lambda_kr, "prp": config.lambda_prp, "div": config.lambda_div}
        total = targets[0].new_zeros(())
        for name, value in terms.items():
            total = total + weights[name] * (value / units[name] if name in units else value)
        terms["total"] = total
        return terms

    @torch.no_grad()
    def relative_errors(self, teacher_features: list[torch.Tensor]) -> dict[str, list[float]]:
        """Per student and stage: Σ(s − f_b)² / Σ f_b² (error energy / target energy) on these features."""
        targets = self.targets(teacher_features)
        outputs = self.students(self.unified(teacher_features), targets)
        return {name: [float((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
                       for t, s in zip(targets, student, strict=True)]
                for name, student in outputs.items()}

    def loss(self, teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 9 from precomputed (or cached) teacher features."""
        return self.loss_terms(teacher_features)["total"]

    # --- scoring ----------------------------------------------------------------------------------------------------

    def distance_maps(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-stage, per-student distance maps: 1 − cos(f_b, s) for each student, or 1 − cos(s1, s2)."""
        targets = self.targets(teacher_features)
        outputs = self.students(self.unified(teacher_features), targets)
        if self.config.score_map == "student_student":
            return [cosine_distance_map(a, b) for a, b in zip(outputs["s1"], outputs["s2"], strict=True)]
        return [cosine_distance_map(t, s) for student in outputs.values() for t, s in zip(targets, student, strict=True)]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B×H×W) and image scores (B) for [0, 1] images."""
        check_finite(images)
        maps = anomaly_maps(self.distance_maps(self.teacher(images)), images.shape[-2:], self.config.sigma)
        return maps, image_scores(maps, self.config.score_reduce)


__all__ = ["ABLATIONS", "LOSS_TERMS", "MMU", "PDD", "InA", "PDDConfig", "PDDStudent", "fixed_projection"]
