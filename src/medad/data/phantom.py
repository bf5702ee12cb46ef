"""Deterministic synthetic phantom images with lesions and masks (tests, offline demo).

Styles
------
* ``"head"`` — head-CT-like: bright skull ring, grey brain with smooth texture and a brighter
  inner (white-matter-like) region, dark ventricles.
* ``"brain"`` — brain-MRI-like (T2 look): dark skull ring with a bright scalp, textured brain,
  bright CSF ventricles.
* ``"chest"`` — chest-X-ray-like: body ellipse, two dark lungs with vessel texture and ribs,
  bright mediastinum/spine and heart.

Each normal image varies in shape (size, position, rotation of the anatomy), texture (smooth
random fields) and noise.  An abnormal image is a normal image plus one lesion: an irregular
blob inside the organ, brighter or darker than its surroundings (random), with a soft edge; its
mask is the lesion support (where the intensity change is ≥ half its peak).

Everything is a function of ``(seed, style, split, index)`` through
``numpy.random.default_rng``, so a task is bit-identical across runs and machines.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = ["STYLES", "make_phantom", "make_phantom_task"]

STYLES = ("head", "brain", "chest")
_STYLE_ID = {s: i for i, s in enumerate(STYLES)}
_SPLIT_ID = {"train": 0, "test_normal": 1, "test_abnormal": 2}
_MARKER = ".medad_phantom.json"


def _grid(size: int):
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="ij")  # yy, xx


def _ellipse(yy, xx, cy, cx, ry, rx, theta=0.0):
    """Normalised radius: < 1 inside the ellipse."""
    y, x = yy - cy, xx - cx
    ct, st = np.cos(theta), np.sin(theta)
    u = x * ct + y * st
    v = -x * st + y * ct
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _smooth(rng, size, sigma_frac, amp):
    f = gaussian_filter(rng.standard_normal((size, size)), sigma=max(sigma_frac * size, 0.5),
                        mode="reflect")
    f /= f.std() + 1e-8
    return amp * f


def _soft(r, edge):
    """1 inside (r < 1), 0 outside, linear ramp of width ``edge`` around r = 1."""
    return np.clip((1 - r) / edge + 0.5, 0, 1)


def _head(rng, size, yy, xx, mri: bool):
    cy, cx = rng.uniform(-0.05, 0.05, 2)
    ry, rx = rng.uniform(0.78, 0.9), rng.uniform(0.66, 0.78)
    th = rng.uniform(-0.25, 0.25)
    edge = 2.5 / size
    r = _ellipse(yy, xx, cy, cx, ry, rx, th)
    skull_t = rng.uniform(0.07, 0.1)
    outer = _soft(r, edge * 2)
    inner = _soft(r / (1 - skull_t), edge * 2)
    img = np.zeros((size, size))
    tex = _smooth(rng, size, 0.06, 0.05) + _smooth(rng, size, 0.015, 0.025)
    wm = _soft(_ellipse(yy, xx, cy, cx, ry * 0.62, rx * 0.6, th), 0.25)
    if mri:
        brain = 0.42 + 0.1 * wm + tex
        img = outer * (1 - inner) * 0.08 + inner * brain
        scalp = _soft(r / 1.04, edge * 2) * (1 - outer)
        img += scalp * 0.55
        vent_val = 0.9
    else:
        brain = 0.4 + 0.06 * wm + tex
        img = outer * (1 - inner) * rng.uniform(0.88, 0.98) + inner * brain
        vent_val = 0.12
    # ventricles: two tilted ellipses near the midline
    for sgn in (-1, 1):
        vr = _ellipse(yy, xx, cy + rng.uniform(-0.08, 0.02), cx + sgn * rng.uniform(0.07, 0.11),
                      rng.uniform(0.16, 0.24), rng.uniform(0.04, 0.07), th + sgn * 0.25)
        v = _soft(vr, 0.3)
        img = img * (1 - v) + v * vent_val
    organ = inner > 0.5
    # keep lesions away from skull and ventricles: inside 70 % of the brain ellipse
    allowed = _ellipse(yy, xx, cy, cx, ry * 0.72, rx * 0.72, th) < 1
    return img, organ, allowed


def _chest(rng, size, yy, xx):
    cy, cx = rng.uniform(-0.04, 0.04, 2)
    body = _soft(_ellipse(yy, xx, cy + 0.05, cx, rng.uniform(0.9, 1.0),
                          rng.uniform(0.85, 0.95)), 0.05)
    img = body * (0.55 + _smooth(rng, size, 0.08, 0.03))
    lungs = np.zeros_like(img)
    allowed = np.zeros(img.shape, bool)
    for sgn in (-1, 1):
        ly = cy + rng.uniform(-0.12, -0.02)
        lx = cx + sgn * rng.uniform(0.36, 0.44)
        lr = _ellipse(yy, xx, ly, lx, rng.uniform(0.55, 0.68), rng.uniform(0.24, 0.3),
                      sgn * rng.uniform(0.05, 0.15))
        lungs = np.maximum(lungs, _soft(lr, 0.15))
        allowed |= lr < 0.75
    vessels = np.abs(_smooth(rng, size, 0.03, 1.0))
    vessels = np.clip(1 - vessels / 0.35, 0, 1) * 0.12
    freq = rng.uniform(9, 12)
    ribs = ((np.sin((yy + 0.35 * xx ** 2) * freq * np.pi + rng.uniform(0, 6.28)) > 0.55)
            .astype(float))
    ribs = gaussian_filter(ribs, 0.6) * 0.12
    lung_val = 0.18 + vessels + ribs + _smooth(rng, size, 0.05, 0.02)
    img = img * (1 - lungs) + lungs * lung_val
    med = _soft(np.abs(xx - cx) / rng.uniform(0.1, 0.14), 0.3) * body
    img = np.maximum(img, med * rng.uniform(0.7, 0.8))
    heart = _soft(_ellipse(yy, xx, cy + rng.uniform(0.25, 0.35), cx + rng.uniform(0.1, 0.2),
                           rng.uniform(0.22, 0.28), rng.uniform(0.25, 0.32)), 0.2)
    img = img * (1 - heart) + heart * rng.uniform(0.62, 0.72)
    allowed &= heart < 0.1
    return img, body > 0.5, allowed


def _lesion(rng, size, yy, xx, allowed, polarity: str | None):
    cand = np.argwhere(allowed)
    if len(cand) == 0:  # pragma: no cover - anatomy always leaves room
        cand = np.argwhere(np.ones_like(allowed))
    py, px = cand[rng.integers(len(cand))]
    cy, cx = yy[py, px], xx[py, px]
    rad = rng.uniform(0.1, 0.22)
    r = _ellipse(yy, xx, cy, cx, rad * rng.uniform(0.7, 1.2), rad * rng.uniform(0.7, 1.2),
                 rng.uniform(0, np.pi))
    r = r * (1 + _smooth(rng, size, 0.05, 0.12))  # irregular border
    profile = np.clip(1.6 * (1.0 - r ** 2), 0, 1)
    profile = gaussian_filter(profile, 0.7)
    polarity = polarity or ("bright" if rng.random() < 0.5 else "dark")
    amp = rng.uniform(0.22, 0.35) * (1 if polarity == "bright" else -1)
    mask = profile >= 0.5
    return amp * profile, mask


def make_phantom(seed: int = 0, *, size: int = 64, style: str = "head", lesion: bool = False,
                 polarity: str | None = None, index: int = 0, split: str = "train"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One phantom image: ``(image uint8 H×W, mask bool H×W)`` (mask all-False if no lesion).

    ``polarity`` ∈ {``"bright"``, ``"dark"``, ``None`` (random)}.  Deterministic in
    ``(seed, style, split, index, lesion)``.
    """
    if style not in _STYLE_ID:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    if size < 16:
        raise ValueError(f"size must be ≥ 16, got {size}")
    split_id = _SPLIT_ID.get(split, 3)
    rng = np.random.default_rng([int(seed), _STYLE_ID[style], split_id, int(index)])
    yy, xx = _grid(size)
    if style == "chest":
        img, organ, allowed = _chest(rng, size, yy, xx)
    else:
        img, organ, allowed = _head(rng, size, yy, xx, mri=style == "brain")
    mask = np.zeros((size, size), bool)
    if lesion:
        delta, mask = _lesion(rng, size, yy, xx, allowed, polarity)
        img = img + delta
    img = img + rng.normal(0, 0.015, img.shape) * (img > 0.02)
    img8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return img8, mask


def make_phantom_task(root_dir: str | os.PathLike, *, name: str = "phantom", n_train: int = 20,
                      n_test_normal: int = 10, n_test_abnormal: int = 10, size: int = 64,
                      seed: int = 0, style: str = "head"):
    """Write a phantom task in the MVTec layout and return it as a :class:`Task`.

    Layout: ``train/good/NNN.png``, ``test/good/NNN.png``, ``test/lesion/NNN.png``,
    ``ground_truth/lesion/NNN_mask.png`` (0/255).  ``root_dir`` must be empty or absent, or
    hold an earlier phantom (marker file ``.medad_phantom.json``): with the same parameters it
    is reused as is, otherwise its ``train/ test/ ground_truth/`` folders are rewritten.
    """
    from .tasks import from_mvtec

    root = Path(root_dir)
    params = {"n_train": n_train, "n_test_normal": n_test_normal,
              "n_test_abnormal": n_test_abnormal, "size": size, "seed": seed, "style": style,
              "version": 1}
    if style not in _STYLE_ID:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    if n_train < 1:
        raise ValueError("n_train must be ≥ 1")
    marker = root / _MARKER
    description = (f"synthetic {style} phantom (seed {seed}, {size} px): {n_train} train, "
                   f"{n_test_normal} normal + {n_test_abnormal} lesion test images")
    if root.exists() and any(root.iterdir()):
        if not marker.is_file():
            raise FileExistsError(f"{root} is not empty and holds no phantom; give an empty or "
                                  "new folder")
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            old = None
        if old == params:
            return from_mvtec(root, name=name, description=description)
        for sub in ("train", "test", "ground_truth"):
            shutil.rmtree(root / sub, ignore_errors=True)
    plan = [("train", "train/good", n_train, False), ("test_normal", "test/good", n_test_normal,
                                                       False),
            ("test_abnormal", "test/lesion", n_test_abnormal, True)]
    for split, folder, n, lesion in plan:
        (root / folder).mkdir(parents=True, exist_ok=True)
        if lesion and n:
            (root / "ground_truth" / "lesion").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = make_phantom(seed, size=size, style=style, lesion=lesion, index=i,
                                     split=split)
            Image.fromarray(img).save(root / folder / f"{i:03d}.png")
            if lesion:
                Image.fromarray((mask * 255).astype(np.uint8)).save(
                    root / "ground_truth" / "lesion" / f"{i:03d}_mask.png")
    marker.write_text(json.dumps(params, sort_keys=True))
    return from_mvtec(root, name=name, description=description)
