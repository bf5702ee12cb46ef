"""Synthetic anomalies made from normal images, for label-free model selection on held-out normals.

Each held-out normal image gets one elliptical anomaly inside its foreground (pixels brighter than
:data:`FOREGROUND_LEVEL`; anywhere when the image has none), alternately of two kinds:

* ``"patch"`` — foreign tissue: the ellipse is filled with a region of *another* normal image of the set, taken
  at a random foreground location (a CutPaste-like structural anomaly, no intensity statistics changed);
* ``"intensity"`` — a lesion-like local brightening or darkening: the ellipse is multiplied by a factor in
  [0.5, 0.75] or [1.3, 1.6] with a soft edge, clipped to [0, 1].

The mask is the ellipse.  Everything is a function of ``seed``, so a selection is reproducible.  No test image
and no label is involved: these images exist to rank models on training data only.
"""

from __future__ import annotations

import numpy as np
import torch

#: a pixel belongs to the foreground when its channel mean exceeds this ([0, 1] images)
FOREGROUND_LEVEL = 0.1
#: the ellipse's semi-axes as fractions of the image side
AXIS_RANGE = (0.06, 0.14)
KINDS = ("patch", "intensity")


def _foreground_point(image: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    """A random (row, column) in the foreground of a C×H×W image, at least ``margin`` pixels from its border."""
    height, width = image.shape[-2:]
    inner = np.zeros((height, width), dtype=bool)
    inner[margin:height - margin, margin:width - margin] = True
    candidates = np.argwhere((image.mean(axis=0) > FOREGROUND_LEVEL) & inner)
    if len(candidates) == 0:
        candidates = np.argwhere(inner)
    row, column = candidates[rng.integers(len(candidates))]
    return int(row), int(column)


def _ellipse(height: int, width: int, centre: tuple[int, int], axes: tuple[float, float], angle: float) -> np.ndarray:
    """The ellipse's level over an H×W grid: (u/a)² + (v/b)² in its rotated frame, < 1 inside."""
    rows, columns = np.mgrid[:height, :width].astype(np.float64)
    dy, dx = rows - centre[0], columns - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2


def pasted_anomalies(images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One synthetic anomaly per image of an N×C×H×W [0, 1] batch (N ≥ 2): (anomalous images, N×1×H×W masks, kinds).

    Image i gets kind ``KINDS[i % 2]``; a ``"patch"`` comes from image (i + offset) mod N, offset ≥ 1 random.
    """
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"pasted_anomalies needs an N×C×H×W batch of at least 2 images, got shape {tuple(images.shape)}")
    rng = np.random.default_rng(seed)
    source = images.detach().cpu().numpy()
    count, _, height, width = source.shape
    anomalous, masks, kinds = source.copy(), np.zeros((count, 1, height, width), dtype=np.float32), []
    side = min(height, width)
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        axes = tuple(float(a) for a in rng.uniform(*AXIS_RANGE, size=2) * side)
        margin = int(np.ceil(max(axes))) + 1
        centre = _foreground_point(source[index], rng, margin)
        level = _ellipse(height, width, centre, axes, rng.uniform(0, np.pi))
        inside = level < 1
        if kind == "patch":
            donor = (index + int(rng.integers(1, count))) % count
            donor_centre = _foreground_point(source[donor], rng, margin)
            shifted = np.roll(source[donor], (centre[0] - donor_centre[0], centre[1] - donor_centre[1]), axis=(1, 2))
            anomalous[index][:, inside] = shifted[:, inside]
        else:
            factor = rng.uniform(0.5, 0.75) if rng.random() < 0.5 else rng.uniform(1.3, 1.6)
            weight = np.clip(2.0 * (1.0 - level), 0.0, 1.0)  # soft edge: full change inside level ≤ 0.5
            anomalous[index] = np.clip(source[index] * (1 + (factor - 1) * weight), 0.0, 1.0)
        masks[index, 0] = inside
        kinds.append(kind)
    return torch.from_numpy(anomalous).to(images.dtype), torch.from_numpy(masks), kinds


__all__ = ["KINDS", "pasted_anomalies"]
