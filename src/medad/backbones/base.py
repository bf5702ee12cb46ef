"""The teacher interface every frozen ImageNet encoder implements.

A teacher takes images as float tensors B×3×H×W in [0, 1] (the data layer's
convention) on any device (they are moved to the teacher's), applies its own
ImageNet normalisation and returns a list of float32 feature maps, shallow to
deep (on CUDA computed under autocast, see ``medad.device``).  ``feature_info``
describes those maps (channels and stride), so models never hard-code channel
counts or strides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medad.device import autocast
from medad.errors import MissingWeightsError

__all__ = ["FeatureStage", "MissingWeightsError", "Teacher"]


@dataclass(frozen=True)
class FeatureStage:
    """One feature map a teacher returns: channel count and stride w.r.t. the input."""

    channels: int
    stride: int


class Teacher(nn.Module):
    """Frozen encoder returning multi-scale features of [0, 1] images.

    Subclasses set ``name``, ``feature_info`` (shallow → deep), ``mean``/``std``
    buffers for their normalisation and implement ``extract`` on normalised input.
    """

    name: str = "teacher"
    feature_info: list[FeatureStage]

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def max_stride(self) -> int:
        return max(stage.stride for stage in self.feature_info)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def extract(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher {self.name} expects B×3×H×W images, got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.max_stride or width % self.max_stride:
            raise ValueError(
                f"image size {height}×{width} is not divisible by teacher {self.name}'s deepest stride "
                f"{self.max_stride}; choose an image size that is a multiple of {self.max_stride}"
            )
        images = images.to(self.mean.device, non_blocking=True)
        with autocast(images.device):
            features = self.extract(self.normalise(images))
        return [feature.float() for feature in features]

    def freeze(self) -> Teacher:
        """Put the teacher in eval mode with gradients off (it is never trained)."""
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Teacher:
        # A teacher's BatchNorm statistics never change: it always stays in eval mode.
        return super().train(False)
