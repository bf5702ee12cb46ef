"""Checks of a support set before it is used: duplicate and near-duplicate support images.

A support repeated (the same file twice, or a re-encoded or resized copy) adds nothing to the normal
appearance the queries are matched against, but it ruins what the supports say about each other: a copy's
leave-one-out score is ~0 (its twin is among the others), so the standardisation statistics collapse and
every query looks abnormal.  Two supports are near-duplicates when their grey thumbnails
(:data:`THUMBNAIL` px a side, each standardised) correlate at :data:`NEAR_DUPLICATE_CORRELATION` or more;
the later one is dropped and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

THUMBNAIL = 32
NEAR_DUPLICATE_CORRELATION = 0.995


@dataclass(frozen=True)
class DroppedSupport:
    name: str
    duplicate_of: str
    correlation: float

    def describe(self) -> str:
        kind = "a duplicate" if self.correlation >= 0.99995 else "a near-duplicate"
        return f"{self.name} is {kind} of {self.duplicate_of} (thumbnail correlation {self.correlation:.4f})"


def _thumbnails(images: torch.Tensor) -> torch.Tensor:
    """N×3×H×W in [0, 1] → N×(THUMBNAIL²) standardised grey thumbnails."""
    grey = F.interpolate(images.float().mean(dim=1, keepdim=True), size=(THUMBNAIL, THUMBNAIL), mode="area")
    flat = grey.flatten(1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


def distinct_supports(images: torch.Tensor, names: list[str]) -> tuple[list[int], list[DroppedSupport]]:
    """Indices of the supports to keep (the first of each group of near-duplicates) and what was dropped."""
    if len(images) != len(names):
        raise ValueError(f"{len(images)} support images but {len(names)} names")
    thumbs = _thumbnails(images)
    kept: list[int] = []
    dropped: list[DroppedSupport] = []
    for index in range(len(images)):
        if kept:
            correlations = thumbs[kept] @ thumbs[index]
            best = int(correlations.argmax())
            if float(correlations[best]) >= NEAR_DUPLICATE_CORRELATION:
                dropped.append(DroppedSupport(names[index], names[kept[best]], float(correlations[best])))
                continue
        kept.append(index)
    return kept, dropped
