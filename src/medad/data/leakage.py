"""Exact-duplicate detection by decoded-pixel hash (leakage between splits and tasks).

What is hashed
--------------
The pixels **as decoded**, before scaling to ``[0, 1]``: the array returned by
:func:`medad.data.io.decode_image` — ``uint8`` grey ``H×W`` or RGB ``H×W×3`` (alpha already
composited on black, palettes expanded, RGB with three equal channels collapsed to grey so an
``L`` copy and an ``RGB`` copy of the same picture match), ``uint16`` for 16-bit images,
rescaled values for DICOM; for volume slices the stored slice values.  The digest is BLAKE2b
(128 bit) of dtype, shape and bytes.  Two files are duplicates when they decode to the same
pixels, whatever their names, containers or metadata; a re-encoded (lossy) copy is *not* an
exact duplicate.

Hashes are cached in memory, keyed by ``(absolute path, slice index, mtime_ns, size)``, so
repeated checks (and building several tasks from one folder) decode each file once.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from threading import Lock
from collections.abc import Iterable, Sequence

import numpy as np

from .io import ImageReadError, decode_image
from .samples import RemovedSample, Sample, Task

__all__ = [
    "pixel_hash",
    "array_hash",
    "find_duplicates",
    "cross_split_duplicates",
    "dedupe_task",
    "cross_task_overlap",
    "clear_hash_cache",
    "hash_cache_info",
]

_CACHE: dict[tuple, str | ImageReadError] = {}
_LOCK = Lock()
_STATS = {"hits": 0, "misses": 0}


def clear_hash_cache() -> None:
    with _LOCK:
        _CACHE.clear()
        _STATS.update(hits=0, misses=0)


def hash_cache_info() -> dict:
    """``{"size": entries, "hits": n, "misses": n}``."""
    with _LOCK:
        return {"size": len(_CACHE), **_STATS}


def array_hash(arr: np.ndarray) -> str:
    """BLAKE2b-128 of an array's dtype, shape and bytes."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _key(path: Path, slice_index: int | None) -> tuple:
    try:
        st = os.stat(path)
        return (os.path.abspath(path), slice_index, st.st_mtime_ns, st.st_size)
    except OSError:
        return (os.path.abspath(path), slice_index, None, None)


def pixel_hash(sample_or_path: Sample | str | os.PathLike, slice_index: int | None = None,
               *, decoded: np.ndarray | None = None) -> str:
    """Hash of the decoded pixels of a sample / file / volume slice (cached).

    ``decoded`` lets a caller that already decoded the file store its hash without decoding
    again.  Raises :class:`~medad.data.io.ImageReadError` (also cached) for unreadable files.
    """
    if hasattr(sample_or_path, "slice_index") and hasattr(sample_or_path, "path"):
        path, slice_index = Path(sample_or_path.path), sample_or_path.slice_index
    else:
        path = Path(sample_or_path)
    key = _key(path, slice_index)
    with _LOCK:
        hit = _CACHE.get(key) if key[2] is not None else None
        if hit is not None:
            _STATS["hits"] += 1
    if hit is not None:
        if isinstance(hit, ImageReadError):
            raise hit
        return hit
    try:
        if decoded is not None:
            arr = decoded
        elif slice_index is not None:
            from .volumes import volume_slice_raw

            arr = volume_slice_raw(path, slice_index)
        else:
            arr = decode_image(path).array
        value: str | ImageReadError = array_hash(arr)
    except ImageReadError as exc:
        value = exc
    with _LOCK:
        _STATS["misses"] += 1
        if key[2] is not None:
            _CACHE[key] = value
    if isinstance(value, ImageReadError):
        raise value
    return value


def find_duplicates(samples: Iterable[Sample]) -> list[list[Sample]]:
    """Groups (≥ 2 members) of samples whose pixels are identical, in input order.

    Unreadable samples raise :class:`~medad.data.io.ImageReadError`.
    """
    groups: dict[str, list] = defaultdict(list)
    for s in samples:
        groups[pixel_hash(s)].append(s)
    return [g for g in groups.values() if len(g) > 1]


def cross_split_duplicates(splits: dict[str, Sequence[Sample]]) -> list[dict[str, list]]:
    """Duplicate groups spanning more than one split: ``[{split: [samples]}, ...]``."""
    by_hash: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for split, samples in splits.items():
        for s in samples:
            by_hash[pixel_hash(s)][split].append(s)
    return [dict(v) for v in by_hash.values() if len(v) > 1]


def dedupe_task(task: Task) -> Task:
    """Remove training samples pixel-identical to any test/valid sample (in place).

    Each removal is recorded in ``task.removed`` as a
    :class:`~medad.data.tasks.RemovedSample` with the reason and the evaluation duplicates.
    Returns the task.
    """
    evals: dict[str, list] = defaultdict(list)
    for split in ("test", "valid"):
        for s in getattr(task, split):
            evals[pixel_hash(s)].append((split, s))
    kept = []
    for s in task.train:
        dups = evals.get(pixel_hash(s))
        if not dups:
            kept.append(s)
            continue
        where = sorted({f"{sp}/{d.kind}" for sp, d in dups})
        reason = (f"pixel-identical to {len(dups)} evaluation image(s) in {', '.join(where)} "
                  f"(e.g. {dups[0][1].name})")
        task.removed.append(RemovedSample(s, reason, tuple(d for _, d in dups)))
    task.train = kept
    return task


def cross_task_overlap(test_samples: Iterable[Sample],
                       train_samples: Iterable[Sample]) -> list[tuple[Sample, Sample]]:
    """Pairs ``(test_sample, train_sample)`` with identical pixels.

    For the few-shot leave-one-out protocol: the target task's test images must not appear in
    the training samples of the other tasks.  Empty list = no overlap.
    """
    train_by_hash: dict[str, list] = defaultdict(list)
    for s in train_samples:
        train_by_hash[pixel_hash(s)].append(s)
    pairs = []
    for t in test_samples:
        for s in train_by_hash.get(pixel_hash(t), ()):
            pairs.append((t, s))
    return pairs
