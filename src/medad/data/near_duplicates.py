"""Near-duplicate detection: copies that survive resizing, re-encoding, grey↔RGB and small crops.

Exact pixel hashes (:mod:`medad.data.leakage`) miss a copy that was resized or saved again as JPEG.
Here every image is reduced to a *fingerprint*: its grey levels (the mean of the colour channels) are
centre-cropped by each fraction in :data:`CROPS` of each side, area-averaged to ``SIZE × SIZE``, high-passed
(minus a Gaussian blur of :data:`HIGH_PASS_SIGMA` thumbnail pixels, so that the shared silhouette of an
organ does not make distinct patients look alike) and standardised to zero mean and unit norm.  The
similarity of two images is the largest correlation over pairs of their crops (a copy cropped by a few per
cent at its borders still lines up with one crop of the original); they are near-duplicates when it is at
least :data:`THRESHOLD`.  A copy shifted off-centre by more than about one per cent is not covered.

The settings were chosen on real data (``docs/DATA.md`` has the table): brainmri's normals that are resized
copies of brain_tumor training normals correlate with their source at ≥ 0.999; resized, grey, JPEG (quality
60) and 4 %-cropped copies at ≥ 0.95; while the nearest distinct image of the same modality stays below
(99th percentile 0.93 for mammograms, 0.78 for chest X-rays).

Fingerprints are cached in memory, keyed by ``(absolute path, slice index, mtime_ns, size)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from threading import Lock

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .io import decode_image
from .samples import RemovedSample, Sample, Task

__all__ = ["SIZE", "CROPS", "HIGH_PASS_SIGMA", "THRESHOLD", "similarity", "fingerprint", "image_fingerprint", "fingerprints",
           "NearDuplicateMatch", "near_duplicate_pairs", "near_duplicate_groups",
           "drop_near_duplicates", "clean_task", "clear_fingerprint_cache"]

#: side of the fingerprint thumbnail (pixels)
SIZE = 32
#: fractions of each side cropped away, one fingerprint row each (tolerates small centred crops of a copy)
CROPS = (0.0, 0.02, 0.04, 0.06, 0.08)
#: Gaussian blur (thumbnail pixels) subtracted from the thumbnail
HIGH_PASS_SIGMA = 1.5
#: correlation at or above which two images are near-duplicates
THRESHOLD = 0.95

_CACHE: dict[tuple, np.ndarray] = {}
_LOCK = Lock()


def clear_fingerprint_cache() -> None:
    """Forget every cached fingerprint."""
    with _LOCK:
        _CACHE.clear()


def image_fingerprint(image: np.ndarray) -> np.ndarray:
    """Fingerprint of an image array (``H×W``, ``H×W×C`` or ``C×H×W`` with ``C ≤ 4``), any dtype.

    Returns a float32 ``len(CROPS) × SIZE²`` array, one row per crop, each with zero mean and unit norm
    (all zeros for a constant image, which then matches nothing).
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        channel_axis = 0 if a.shape[0] <= 4 and a.shape[-1] > 4 else -1
        a = a.mean(axis=channel_axis)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image or an image with channels, got shape {a.shape}")
    grey = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.stack([_crop_fingerprint(grey, crop) for crop in CROPS]).astype(np.float32)


def _crop_fingerprint(grey: Image.Image, crop: float) -> np.ndarray:
    w, h = grey.size
    dx, dy = int(round(w * crop)), int(round(h * crop))
    box = (dx, dy, w - dx, h - dy) if w - 2 * dx >= 2 and h - 2 * dy >= 2 else (0, 0, w, h)
    thumb = np.asarray(grey.resize((SIZE, SIZE), Image.Resampling.BOX, box=box), dtype=np.float64)
    thumb = thumb - gaussian_filter(thumb, HIGH_PASS_SIGMA, mode="nearest")
    v = (thumb - thumb.mean()).ravel()
    norm = np.linalg.norm(v)
    return v / norm if norm > 1e-6 * max(1.0, float(np.abs(thumb).max())) else np.zeros_like(v)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Near-duplicate similarity of stacked fingerprints: an ``N × M`` float32 matrix.

    ``a`` is ``N × len(CROPS) × SIZE²`` (or one fingerprint), ``b`` likewise.  The similarity is the
    largest correlation of one image's uncropped view with any crop of the other, in both directions, so
    a copy cropped at its borders matches the crop of the original that shows the same content.
    """
    a = a[None] if a.ndim == 2 else a
    b = b[None] if b.ndim == 2 else b
    n_crops = a.shape[1]
    out = np.empty((len(a), len(b)), dtype=np.float32)
    for start in range(0, len(a), 512):
        block = a[start:start + 512]
        whole_a = block[:, 0] @ b.reshape(len(b) * n_crops, -1).T
        whole_b = block.reshape(len(block) * n_crops, -1) @ b[:, 0].T
        out[start:start + len(block)] = np.maximum(
            whole_a.reshape(len(block), len(b), n_crops).max(axis=2),
            whole_b.reshape(len(block), n_crops, len(b)).max(axis=1))
    return out


def _key(sample: Sample) -> tuple:
    try:
        st = os.stat(sample.path)
        return (os.path.abspath(sample.path), sample.slice_index, st.st_mtime_ns, st.st_size)
    except OSError:
        return (os.path.abspath(sample.path), sample.slice_index, None, None)


def _decoded_pixels(sample: Sample) -> np.ndarray:
    if sample.slice_index is not None:
        from .volumes import volume_slice_raw

        return volume_slice_raw(sample.path, sample.slice_index)
    return decode_image(sample.path).array


def fingerprint(sample: Sample) -> np.ndarray:
    """Fingerprint of a sample's image (cached); unreadable files raise ``ImageReadError``."""
    key = _key(sample)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    value = image_fingerprint(_decoded_pixels(sample))
    if key[2] is not None:
        with _LOCK:
            _CACHE[key] = value
    return value


def fingerprints(samples: Sequence[Sample]) -> np.ndarray:
    """``N × len(CROPS) × SIZE²`` stack of the samples' fingerprints."""
    if not samples:
        return np.zeros((0, len(CROPS), SIZE * SIZE), dtype=np.float32)
    return np.stack([fingerprint(s) for s in samples])


@dataclass(frozen=True)
class NearDuplicateMatch:
    """``query`` has a near-copy ``match`` (correlation ``similarity``)."""

    query: Sample
    match: Sample
    similarity: float


def near_duplicate_pairs(queries: Sequence[Sample], pool: Sequence[Sample], *,
                         threshold: float = THRESHOLD) -> list[NearDuplicateMatch]:
    """Every ``(query, pool sample)`` pair whose correlation is ≥ ``threshold``, most similar first.

    A sample that appears (same path and slice) in both lists is not paired with itself.
    """
    if not queries or not pool:
        return []
    sim = similarity(fingerprints(queries), fingerprints(pool))
    out = []
    for i, j in zip(*np.nonzero(sim >= threshold), strict=True):
        q, p = queries[i], pool[j]
        if q.path == p.path and q.slice_index == p.slice_index:
            continue
        out.append(NearDuplicateMatch(q, p, float(sim[i, j])))
    return sorted(out, key=lambda m: -m.similarity)


def near_duplicate_groups(samples: Sequence[Sample], *,
                          threshold: float = THRESHOLD) -> list[list[Sample]]:
    """Groups (≥ 2 members) of samples linked by near-duplicate pairs (transitively), in input order."""
    samples = list(samples)
    parent = list(range(len(samples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if samples:
        stack = fingerprints(samples)
        sim = similarity(stack, stack)
        for i, j in zip(*np.nonzero(np.triu(sim >= threshold, k=1)), strict=True):
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(samples)):
        groups.setdefault(root(i), []).append(i)
    return [[samples[i] for i in g] for g in groups.values() if len(g) > 1]


def drop_near_duplicates(samples: Iterable[Sample], of: Sequence[Sample], *, why: str,
                         threshold: float = THRESHOLD) -> tuple[list[Sample], list[RemovedSample]]:
    """Split ``samples`` into those with no near-copy in ``of`` and the removed ones (with the reason)."""
    samples = list(samples)
    matches: dict[int, list[NearDuplicateMatch]] = {}
    index = {id(s): i for i, s in enumerate(samples)}
    for m in near_duplicate_pairs(samples, of, threshold=threshold):
        matches.setdefault(index[id(m.query)], []).append(m)
    kept, removed = [], []
    for i, s in enumerate(samples):
        found = matches.get(i)
        if not found:
            kept.append(s)
            continue
        best = found[0]
        reason = (f"near-duplicate of {len(found)} {why} image(s) (e.g. {best.match.name}, "
                  f"correlation {best.similarity:.3f})")
        removed.append(RemovedSample(s, reason, tuple(m.match for m in found)))
    return kept, removed


def clean_task(task: Task, *, threshold: float = THRESHOLD) -> Task:
    """Make a task near-duplicate-clean (in place): no training image near-copies an evaluation image.

    Training samples with a near-copy among the test or validation images are removed and recorded in
    ``task.removed``; ``task.meta["near_duplicates_removed"]`` holds their count.  The test split is
    left whole, so every test image is still scored; supports drawn from the cleaned training split then
    have no near-copy in the test split either.
    """
    evaluation = list(task.test) + list(task.valid)
    kept, removed = drop_near_duplicates(task.train, evaluation, why="evaluation",
                                         threshold=threshold)
    task.train = kept
    task.removed.extend(removed)
    task.meta["near_duplicates_removed"] = len(removed)
    task.meta["near_duplicate_threshold"] = threshold
    return task
