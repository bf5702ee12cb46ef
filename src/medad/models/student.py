"""RD4AD's one-class bottleneck and the student decoder, built from a teacher's ``feature_info``.

The bottleneck (RD4AD's MFF + OCE) brings every teacher stage to the deepest
stage's resolution with strided 3×3 convolutions, concatenates them and
compresses the result into an embedding at twice the deepest stride.  The
decoder mirrors the teacher: from the embedding it upsamples stage by stage
(2×2 transposed convolution, then residual 3×3 blocks) and returns one map
per teacher stage, shallow → deep, with the teacher's channels and strides.
"""

from __future__ import annotations

from itertools import pairwise

import math

import torch
import torch.nn.functional as F
from torch import nn

from medad.backbones.base import FeatureStage
from medad.device import autocast


#: normalisation layers a student can use: BatchNorm (RD4AD's) or GroupNorm, which behaves the same in
#: training and scoring and does not depend on the batch's composition (few-shot episodes are single-task)
NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with the largest of 8/4/2/1 groups that divides ``channels``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if channels % g == 0), channels)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch") -> nn.Sequential:
    """3×3 convolution (no bias), normalisation, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        norm_layer(norm, out_channels),
        nn.ReLU(inplace=True),
    )


#: from this width on, residual blocks use the ResNet bottleneck form (1×1 → 3×3 at ¼ width → 1×1), as RD4AD's
#: decoder does for WideResNet-50; narrower teachers (EfficientNet-Lite: ≤ 224) keep two full-width 3×3 convs
BOTTLENECK_WIDTH = 256


class ResidualBlock(nn.Module):
    """A residual block ``in_channels → out_channels`` (stride 1 or 2), basic or bottleneck by width."""

    def __init__(self, in_channels: int, out_channels: int | None = None, stride: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        if out_channels >= BOTTLENECK_WIDTH:
            mid = out_channels // 4
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, mid, 1, bias=False), norm_layer(norm, mid), nn.ReLU(inplace=True),
                conv_bn_relu(mid, mid, stride, norm),
                nn.Conv2d(mid, out_channels, 1, bias=False), norm_layer(norm, out_channels),
            )
        else:
            self.body = nn.Sequential(
                conv_bn_relu(in_channels, out_channels, stride, norm),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                norm_layer(norm, out_channels),
            )
        self.shortcut = (nn.Identity() if in_channels == out_channels and stride == 1 else
                         nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       norm_layer(norm, out_channels)))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.shortcut(x) + self.body(x))


def downsampler(in_channels: int, out_channels: int, factor: int, norm: str = "batch") -> nn.Sequential:
    """Strided 3×3 convolutions reducing resolution by ``factor`` (a power of two)."""
    steps = int(math.log2(factor))
    if 2**steps != factor:
        raise ValueError(f"stride ratio {factor} between teacher stages is not a power of two")
    if steps == 0:
        return conv_bn_relu(in_channels, out_channels, norm=norm)
    layers = [conv_bn_relu(in_channels if i == 0 else out_channels, out_channels, 2, norm) for i in range(steps)]
    return nn.Sequential(*layers)


def _lean_aligner(stages: list[FeatureStage], index: int, norm: str = "batch") -> nn.Module:
    """Stage ``index`` brought to the deepest stage's resolution as RD4AD's released code does: each stride-2
    step widens to the channels of the stage at that stride; the deepest stage passes through unchanged."""
    steps = []
    for source, target in pairwise(stages[index:]):
        if target.stride != 2 * source.stride:
            raise ValueError(f"the lean bottleneck needs teacher strides doubling stage by stage, got "
                             f"{[stage.stride for stage in stages]}; use bottleneck='standard'")
        steps.append(conv_bn_relu(source.channels, target.channels, stride=2, norm=norm))
    return nn.Sequential(*steps) if steps else nn.Identity()


#: bottleneck kinds: ``standard`` maps every stage to the deepest width at full width, then refines the deepest
#: stage with a 3×3 conv; ``lean`` (RD4AD's released fusion) widens step by step and passes the deepest through
BOTTLENECKS = ("standard", "lean")


class Bottleneck(nn.Module):
    """Multi-scale fusion of teacher stages into one compact embedding (RD4AD's OCBE)."""

    def __init__(self, stages: list[FeatureStage], embedding_channels: int | None = None,
                 kind: str = "standard", norm: str = "batch") -> None:
        super().__init__()
        if kind not in BOTTLENECKS:
            raise ValueError(f"unknown bottleneck {kind!r}; choose one of {', '.join(BOTTLENECKS)}")
        deepest = stages[-1]
        self.embedding_channels = embedding_channels or 2 * deepest.channels
        self.align = nn.ModuleList(
            [downsampler(stage.channels, deepest.channels, deepest.stride // stage.stride, norm) for stage in stages]
            if kind == "standard" else [_lean_aligner(stages, index, norm) for index in range(len(stages))]
        )
        fused = deepest.channels * len(stages)
        first = (ResidualBlock(fused, self.embedding_channels, stride=2, norm=norm)
                 if self.embedding_channels >= BOTTLENECK_WIDTH
                 else conv_bn_relu(fused, self.embedding_channels, stride=2, norm=norm))
        self.compress = nn.Sequential(first, ResidualBlock(self.embedding_channels, norm=norm))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        aligned = [align(feature) for align, feature in zip(self.align, features, strict=True)]
        return self.compress(torch.cat(aligned, dim=1))


def resize_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``reference``'s spatial size (no-op when equal)."""
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    """Student decoder: embedding → one feature map per teacher stage (shallow → deep).

    With ``priors`` (one map per stage, shallow → deep, as PDD's MPA gives), each stage adds its prior, resized
    to the stage, after up-sampling (a skip input).
    """

    def __init__(self, stages: list[FeatureStage], embedding_channels: int, blocks_per_stage: int = 2,
                 norm: str = "batch") -> None:
        super().__init__()
        self.ups = nn.ModuleList()
        self.refine = nn.ModuleList()
        in_channels, in_stride = embedding_channels, 2 * stages[-1].stride
        for stage in reversed(stages):
            factor = in_stride // stage.stride
            if factor == 1:
                up = conv_bn_relu(in_channels, stage.channels, norm=norm)
            else:
                up = nn.Sequential(
                    nn.ConvTranspose2d(in_channels, stage.channels, factor, stride=factor, bias=False),
                    norm_layer(norm, stage.channels),
                    nn.ReLU(inplace=True),
                )
            self.ups.append(up)
            self.refine.append(nn.Sequential(*[ResidualBlock(stage.channels, norm=norm) for _ in range(blocks_per_stage)],
                                             nn.Conv2d(stage.channels, stage.channels, 1)))
            in_channels, in_stride = stage.channels, stage.stride

    def forward(self, embedding: torch.Tensor, priors: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        deep_first = list(reversed(priors)) if priors is not None else [None] * len(self.ups)
        outputs = []
        x = embedding
        for up, refine, prior in zip(self.ups, self.refine, deep_first, strict=True):
            x = up(x)
            if prior is not None:
                x = x + resize_to(prior, x)
            out = refine(x)
            outputs.append(out)
            x = torch.relu(out)
        return outputs[::-1]


class Student(nn.Module):
    """Bottleneck + decoder: teacher features → reconstructed teacher features."""

    def __init__(self, stages: list[FeatureStage], blocks_per_stage: int = 2, norm: str = "batch",
                 bottleneck: str = "standard") -> None:
        super().__init__()
        self.bottleneck = Bottleneck(stages, kind=bottleneck, norm=norm)
        self.decoder = Decoder(stages, self.bottleneck.embedding_channels, blocks_per_stage, norm)

    def forward(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        with autocast(teacher_features[0].device):
            outputs = self.decoder(self.bottleneck(teacher_features))
        return [output.float() for output in outputs]
