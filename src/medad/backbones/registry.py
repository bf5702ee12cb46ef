"""Build a teacher by name: ``build_teacher("efficientnet_lite0")``."""

from __future__ import annotations

from pathlib import Path

from medad.backbones import DEFAULT_TEACHER
from medad.backbones.base import Teacher
from medad.backbones.efficientnet_lite import WEIGHT_FILES, EfficientNetLite
from medad.backbones.torchvision_resnets import TorchvisionResNet

TORCHVISION_TEACHERS = ("wide_resnet50_2", "resnet18", "resnet34", "resnet50")
OFFLINE_TEACHERS = tuple(WEIGHT_FILES)


def available_teachers() -> list[str]:
    return [*OFFLINE_TEACHERS, *TORCHVISION_TEACHERS, "vmamba_tiny"]


def build_teacher(name: str = DEFAULT_TEACHER, *, weights: str | Path | None = "imagenet",
                  num_stages: int = 3) -> Teacher:
    """A frozen teacher returning ``num_stages`` feature maps at strides 4, 8, 16(, 32).

    ``weights``: "imagenet" (the offline lookup each teacher documents), a file
    path, or None for random weights (tests and speed measurements only).
    """
    if num_stages not in (3, 4):
        raise ValueError("num_stages must be 3 or 4")
    if name in OFFLINE_TEACHERS:
        return EfficientNetLite(name, stages=tuple(range(1, num_stages + 1)), weights=weights)
    if name in TORCHVISION_TEACHERS:
        return TorchvisionResNet(name, num_layers=num_stages, weights=weights)
    if name == "vmamba_tiny":
        from medad.backbones.vmamba import build_vmamba_tiny  # heavy module: imported on demand

        teacher = build_vmamba_tiny(None if weights == "imagenet" else weights, allow_random=weights is None)
        if num_stages == 3:
            teacher.feature_info = teacher.feature_info[:3]
        return teacher
    raise ValueError(f"unknown teacher {name!r}; available: {', '.join(available_teachers())}")
