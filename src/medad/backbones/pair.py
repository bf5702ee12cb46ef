"""Two frozen teachers behind one ``Teacher`` interface (PDD's dual-teacher input).

``TeacherPair(first, second)`` runs both teachers on the same [0, 1] images —
each applying *its own* normalisation (EfficientNet-Lite: (x − 0.5)/0.5,
torchvision / VMamba: ImageNet mean/std) — and returns one flat list:
``[first stage 1 … first stage N, second stage 1 … second stage N]``.
``feature_info`` lists both teachers' stages in that order, and ``name`` is
``"first+second"``.  Because it is a single frozen ``Teacher``, the feature cache
(``medad.features.FeatureCache``) and ``train_unsupervised`` work unchanged.

The two teachers must return the same number of stages at the same strides
(e.g. both built with ``num_stages=4``: strides 4/8/16/32); otherwise the
constructor raises a ``ValueError`` naming the fix.
"""

from __future__ import annotations

from itertools import pairwise

from pathlib import Path

import torch

from medad.backbones.base import FeatureStage, Teacher

WeightsSpec = str | Path | None


class TeacherPair(Teacher):
    """Frozen pair of teachers; forward → first's features followed by second's."""

    def __init__(self, first: Teacher, second: Teacher) -> None:
        # Identity normalisation (mean 0, std 1): each sub-teacher normalises its own input.
        super().__init__(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        check_compatible(first, second)
        self.first = first
        self.second = second
        self.name = f"{first.name}+{second.name}"
        self.num_first = len(first.feature_info)
        self.feature_info = [*first.feature_info, *second.feature_info]
        self.freeze()

    @property
    def first_info(self) -> list[FeatureStage]:
        return list(self.first.feature_info)

    @property
    def second_info(self) -> list[FeatureStage]:
        return list(self.second.feature_info)

    def split(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The flat feature list → (first teacher's stages, second teacher's stages)."""
        if len(features) != len(self.feature_info):
            raise ValueError(f"teacher pair {self.name} returns {len(self.feature_info)} feature maps, got {len(features)}")
        return list(features[: self.num_first]), list(features[self.num_first:])

    def extract(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        # The pair's own mean/std are 0/1, so ``normalised`` is still the [0, 1] input that
        # each sub-teacher normalises in its own forward.
        return [*self.first(normalised), *self.second(normalised)]


def check_compatible(first: Teacher, second: Teacher) -> None:
    """Raise a ``ValueError`` naming the fix when two teachers cannot be paired stage by stage."""
    first_info, second_info = list(first.feature_info), list(second.feature_info)
    if len(first_info) != len(second_info):
        raise ValueError(
            f"teachers {first.name} ({len(first_info)} stages) and {second.name} ({len(second_info)} stages) return "
            f"different numbers of stages; build both with the same num_stages "
            f"(PDD: build_teacher(name, num_stages=4) for strides 4/8/16/32)"
        )
    first_strides = [stage.stride for stage in first_info]
    second_strides = [stage.stride for stage in second_info]
    if first_strides != second_strides:
        raise ValueError(
            f"teachers {first.name} (strides {first_strides}) and {second.name} (strides {second_strides}) have "
            f"incompatible strides: stage i of both must have the same stride; pick teachers with the standard "
            f"pyramid (strides 4/8/16/32 with num_stages=4, as EfficientNet-Lite, ResNets and VMamba-Tiny)"
        )
    for strides, name in ((first_strides, first.name), (second_strides, second.name)):
        if any(b <= a for a, b in pairwise(strides)):
            raise ValueError(f"teacher {name}'s strides {strides} do not increase stage by stage")


def split_pair_name(name: str) -> tuple[str, str]:
    """"a+b" → ("a", "b"), with a clear error otherwise."""
    parts = [part.strip() for part in name.split("+")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"teacher pair {name!r} must name exactly two teachers as 'first+second', "
                         f"e.g. 'wide_resnet50_2+vmamba_tiny' or 'efficientnet_lite0+efficientnet_lite2'")
    return parts[0], parts[1]


def split_pair_weights(weights: WeightsSpec | tuple | list, pair_name: str = "first+second") -> tuple[WeightsSpec, WeightsSpec]:
    """The ``weights`` argument for a pair → one weights spec per teacher.

    ``"imagenet"`` or ``None`` apply to both teachers; a 2-tuple/list gives one
    spec each; a string ``"A+B"`` (that is not itself an existing file) gives A
    to the first teacher and B to the second, each ``imagenet``, ``none``
    (random weights) or a file path.  A single file path is ambiguous → error.
    """
    if weights is None or weights == "imagenet":
        return weights, weights
    if isinstance(weights, (tuple, list)):
        if len(weights) != 2:
            raise ValueError(f"teacher pair {pair_name} needs 2 weights specs, got {len(weights)}")
        return _one_spec(weights[0]), _one_spec(weights[1])
    text = str(weights)
    if "+" in text and not Path(text).is_file():
        first, _, second = text.partition("+")
        return _one_spec(first), _one_spec(second)
    raise ValueError(
        f"a single weights file ({text}) is ambiguous for the teacher pair {pair_name}: pass one spec per teacher as "
        f"'FIRST+SECOND', each 'imagenet' (the offline lookup), 'none' (random) or a file, "
        f"e.g. 'imagenet+/path/to/vssmtiny_dp01_ckpt_epoch_292.pth'"
    )


def _one_spec(spec: WeightsSpec) -> WeightsSpec:
    if spec is None:
        return None
    text = str(spec).strip()
    if text.lower() in ("none", "random", ""):
        return None
    return "imagenet" if text == "imagenet" else Path(text)


def build_teacher_pair(name: str, weights: WeightsSpec | tuple | list = "imagenet", num_stages: int = 4) -> TeacherPair:
    """``build_teacher_pair("efficientnet_lite0+efficientnet_lite2")`` → a frozen ``TeacherPair``."""
    from medad.backbones.registry import build_teacher

    first_name, second_name = split_pair_name(name)
    first_weights, second_weights = split_pair_weights(weights, name)
    return TeacherPair(build_teacher(first_name, weights=first_weights, num_stages=num_stages),
                       build_teacher(second_name, weights=second_weights, num_stages=num_stages))


__all__ = ["TeacherPair", "build_teacher_pair", "check_compatible", "split_pair_name", "split_pair_weights"]
