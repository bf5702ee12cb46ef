"""Heat-map figures: the image and its anomaly-map overlay, at the image's own shape, with a colour bar.

Each figure shows the input at its original resolution (the long side scaled into
[:data:`MIN_SIDE`, :data:`MAX_SIDE`] pixels, aspect ratio kept) beside the same image with the anomaly map
(resized back from the model's square input to the image's shape) blended over it, a colour bar of the
map's values, and a caption with the image's name (its end, when too long), its score and, given a threshold,
the verdict.  The
caption is also stored as the PNG's ``Description``.  Drawn with Pillow (a few milliseconds a figure).

The colour scale (:func:`colour_scale`) is anchored to the decision threshold when there is one: it runs
from 0 to twice the threshold, so the threshold sits at the middle colour and a normal image stays in the
lower (blue–green) half whatever else is in the batch.  Without a threshold it is relative to the images
drawn together (their 1st to 99.9th percentile).  The caption's last line says which.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from medad.io_utils import atomic_path

if TYPE_CHECKING:
    from medad.engine.thresholds import Threshold

MAX_SIDE = 512
MIN_SIDE = 128
_PAD, _GAP, _LINE, _BAR, _BAR_LABELS = 8, 8, 17, 14, 52


def colour_scale(maps: np.ndarray, threshold: float | None) -> tuple[float, float, str]:
    """(vmin, vmax, the line saying what anchors it) of the heat maps drawn together."""
    if threshold is not None and np.isfinite(threshold) and threshold != 0:
        low, high = sorted((0.0, 2.0 * float(threshold)))
        return low, high, (f"colour scale {low:.3g}–{high:.3g}: anchored to the threshold {threshold:.4g} "
                           "(its middle colour)")
    low, high = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
    return low, high, (f"colour scale {low:.3g}–{high:.3g}: relative to the {len(maps)} image(s) drawn together "
                       "(no threshold), so a normal image may show red")


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


def display_size(height: int, width: int) -> tuple[int, int]:
    """The shown size: the original, its long side brought into [MIN_SIDE, MAX_SIDE], aspect ratio kept."""
    long_side = max(height, width)
    scale = min(1.0, MAX_SIDE / long_side) if long_side >= MIN_SIDE else MIN_SIDE / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(array: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """C×H×W (or H×W) float array → the same at ``size``."""
    tensor = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
    squeeze = tensor.ndim == 2
    tensor = tensor[None, None] if squeeze else tensor[None]
    if tuple(tensor.shape[-2:]) != size:
        options = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
        tensor = F.interpolate(tensor, size=size, mode=mode, **options)
    out = tensor[0, 0] if squeeze else tensor[0]
    return out.numpy()


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured anomaly map over an image; image 3×H×W or H×W×3 in [0, 1] → H×W×3 uint8."""
    if image.shape[0] == 3:
        image = np.transpose(image, (1, 2, 0))
    scaled = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    heat = colormaps["jet"](scaled)[..., :3]
    blended = (1 - alpha) * image + alpha * heat
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)


def _font(size: int):
    """matplotlib's DejaVu Sans (it has ≤ and other symbols Pillow's default font lacks), else Pillow's own."""
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except (OSError, ImportError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _fit(text: str, font, width: float, keep_end: bool) -> str:
    """``text`` shortened with '…' to fit ``width`` pixels, keeping its end (paths) or its start."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[1:] if keep_end else text[:-1]
    return "…" + text if keep_end else text + "…"


def _colour_bar(height: int) -> np.ndarray:
    """A vertical jet gradient, high values on top, height×_BAR×3 uint8."""
    ramp = colormaps["jet"](np.linspace(1.0, 0.0, height))[:, :3]
    return (np.repeat(ramp[:, None, :], _BAR, axis=1) * 255).astype(np.uint8)


def save_heatmap_figure(path: str | Path, image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float,
                        caption: str) -> None:
    """Write one heat-map figure (module doc) for a 3×H×W image in [0, 1] and its h×w anomaly map, atomically."""
    height, width = display_size(*image.shape[-2:])
    shown = np.clip(_resize(image, (height, width), "bilinear"), 0, 1)
    heat = _resize(amap, (height, width), "bilinear")
    font, small = _font(13), _font(10)
    lines = caption.splitlines()
    caption_height = _PAD + _LINE * len(lines)
    fig_w = _PAD + width + _GAP + width + _GAP + _BAR + _BAR_LABELS
    fig_h = caption_height + height + _PAD
    canvas = Image.new("RGB", (fig_w, fig_h), "white")
    top = caption_height
    canvas.paste(Image.fromarray((shown.transpose(1, 2, 0) * 255).astype(np.uint8)), (_PAD, top))
    canvas.paste(Image.fromarray(overlay(shown, heat, vmin, vmax)), (_PAD + width + _GAP, top))
    bar_left = _PAD + 2 * (width + _GAP)
    canvas.paste(Image.fromarray(_colour_bar(height)), (bar_left, top))
    draw = ImageDraw.Draw(canvas)
    for fraction in np.linspace(0.0, 1.0, 5 if height >= 120 else 2):
        y = top + round((1 - fraction) * (height - 1))
        draw.line([(bar_left + _BAR, y), (bar_left + _BAR + 3, y)], fill="black")
        draw.text((bar_left + _BAR + 5, y), f"{vmin + fraction * (vmax - vmin):.3g}", fill="black", font=small,
                  anchor="lm" if 6 < y - top < height - 6 else ("lt" if y - top <= 6 else "lb"))
    for row, line in enumerate(lines):
        draw.text((_PAD, _PAD + row * _LINE), _fit(line, font, fig_w - 2 * _PAD, keep_end=row == 0), fill="black",
                  font=font)
    info = PngInfo()
    info.add_text("Description", caption)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", pnginfo=info)


def write_heatmaps(out_dir: Path, names: list[str], originals: Iterable[torch.Tensor], maps: np.ndarray,
                   scores: np.ndarray, *, titles: list[str] | None = None, threshold: Threshold | None = None,
                   labels: list[int] | None = None) -> None:
    """One heat-map figure per image (``names`` give the file names, ``titles`` the captions' first lines;
    ``originals`` the images at their own resolution), on a colour scale anchored to the threshold when there
    is one (:func:`colour_scale`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vmin, vmax, scale = colour_scale(maps, threshold.value if threshold is not None else None)
    for index, (stem, image, amap, score) in enumerate(zip(heatmap_file_stems(names), originals, maps, scores, strict=True)):
        lines = [(titles or names)[index], f"score {score:.4g}"]
        if threshold is not None and threshold.value is not None:
            lines[1] += f" · {threshold.verdict(score)}"
        if labels is not None:
            lines[1] += f" · label: {'abnormal' if labels[index] else 'normal'}"
        save_heatmap_figure(out_dir / f"{stem}.png", image.numpy(), amap, vmin, vmax, "\n".join([*lines, scale]))


def write_ranked_heatmaps(out_dir: Path, paths: list[str], labels: list[int], maps: np.ndarray, scores: np.ndarray,
                          load_original, per_end: int = 8) -> list[int]:
    """Heat maps of the ``per_end`` least and most anomalous of labelled images (all when there are at most
    2 × ``per_end``) and ``index.csv`` (file, path, label, score); ``load_original(i)`` gives image i at its own
    resolution.  Returns the indices shown, least anomalous first."""
    from medad.engine.run_folder import HEATMAP_INDEX, RunFolder

    order = np.argsort(scores, kind="stable")
    shown = np.concatenate([order[:per_end], order[-per_end:]]) if len(order) > 2 * per_end else order
    names = [f"{'abnormal' if labels[i] else 'normal'}_{Path(paths[i]).stem}" for i in shown]
    write_heatmaps(out_dir, names, (load_original(i) for i in shown), maps[shown], scores[shown],
                   titles=[paths[i] for i in shown], labels=[labels[i] for i in shown])
    RunFolder(out_dir).write_csv(HEATMAP_INDEX, ["file", "path", "label", "score"],
                                 ((f"{stem}.png", paths[i], labels[i], float(scores[i]))
                                  for stem, i in zip(heatmap_file_stems(names), shown, strict=True)))
    return [int(i) for i in shown]
