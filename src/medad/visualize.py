"""Heat-map overlays of anomaly maps on the input images (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from medad.io_utils import atomic_path


def heatmap_file_stems(paths: list[str]) -> list[str]:
    """Unique, space-free PNG file stems for these image paths, in order (``x``, ``x_2``, … for repeats)."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = Path(path).stem.replace(" ", "_")
        name, counter = stem, 1
        while name in used:
            counter += 1
            name = f"{stem}_{counter}"
        used.add(name)
        names.append(name)
    return names


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured anomaly map over an image; image 3×H×W or H×W×3 in [0, 1] → H×W×3 uint8."""
    if image.shape[0] == 3:
        image = np.transpose(image, (1, 2, 0))
    scaled = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    heat = colormaps["jet"](scaled)[..., :3]
    blended = (1 - alpha) * image + alpha * heat
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)


def save_overlay_pair(path: str | Path, image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float) -> None:
    """Write the image and its overlay side by side as one PNG, atomically."""
    if image.shape[0] == 3:
        image = np.transpose(image, (1, 2, 0))
    left = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    pair = np.concatenate([left, overlay(image, amap, vmin, vmax)], axis=1)
    with atomic_path(path) as tmp:
        Image.fromarray(pair).save(tmp, format="PNG")
