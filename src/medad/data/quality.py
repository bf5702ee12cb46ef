"""Checks of an input image before it is scored: values a model cannot score, and images it should not.

* **NaN or infinite values** make an image unusable (the readers would silently replace them).
* **Too small** (a side under :data:`MIN_SIDE` pixels) or **constant** (one value everywhere): degenerate
  images that a model scores without meaning; refused unless the caller allows them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_SIDE", "ImageProblems", "image_problems"]

MIN_SIDE = 32


@dataclass
class ImageProblems:
    """What is wrong with one image: ``unusable`` can never be scored, ``degenerate`` only when allowed."""

    unusable: list[str]
    degenerate: list[str]

    def __bool__(self) -> bool:
        return bool(self.unusable or self.degenerate)


def image_problems(array: np.ndarray) -> ImageProblems:
    """Problems of a decoded image (``H×W`` or ``H×W×C``, any dtype, before scaling)."""
    unusable, degenerate = [], []
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        unusable.append(f"{bad} NaN or infinite pixel value{'s' if bad != 1 else ''}")
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE:
        degenerate.append(f"only {height}×{width} pixels (under {MIN_SIDE} on a side)")
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    if finite.size and finite.min() == finite.max():
        degenerate.append(f"constant (every pixel is {finite.flat[0]:g})")
    return ImageProblems(unusable, degenerate)
