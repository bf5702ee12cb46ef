"""Tasks from a CSV manifest (``path,label,split``) and from the slices of a labelled volume."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from .folders import NORMAL_NAMES, Collector, finish
from .io import ImageReadError, file_kind
from .samples import Sample, SkippedFile, Task, TaskLayoutError
from .volumes import MIN_FOREGROUND, classify_slices


_LABEL_WORDS = {"0": 0, "1": 1, "normal": 0, "abnormal": 1, "anomaly": 1, "anomalous": 1,
                "good": 0, "bad": 1}
_SPLIT_WORDS = {"train": "train", "test": "test", "valid": "valid", "val": "valid",
                "validation": "valid"}


def _manifest_rows(csv_path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The manifest's columns (lower-case name → header) and rows; errors for a missing header or column."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise TaskLayoutError(f"{csv_path}: empty manifest (expected a header "
                                  "path,label,split)")
        cols = {c.strip().lower(): c for c in reader.fieldnames if c}
        missing = {"path", "label", "split"} - set(cols)
        if missing:
            raise TaskLayoutError(f"{csv_path}: manifest lacks column(s) {sorted(missing)}; "
                                  f"it has {reader.fieldnames}")
        rows = list(reader)
    if not rows:
        raise TaskLayoutError(f"{csv_path}: manifest has a header but no rows")
    return cols, rows


def _cell(cols: dict[str, str], row: dict[str, str], col: str) -> str | None:
    """A row's value in column ``col`` (any case), stripped; None where the manifest has no such column."""
    c = cols.get(col)
    v = row.get(c) if c else None
    return v.strip() if isinstance(v, str) else v


def _label_and_split(get: Callable[[str], str | None], where: str) -> tuple[int, str]:
    """A row's label (0 normal, 1 abnormal) and split; training images must be normal."""
    lab_s = (get("label") or "").lower()
    if lab_s in _LABEL_WORDS:
        label = _LABEL_WORDS[lab_s]
    elif lab_s in NORMAL_NAMES:
        label = 0
    else:
        raise TaskLayoutError(f"{where}: label {get('label')!r} is not "
                              "normal/abnormal/0/1")
    split = _SPLIT_WORDS.get((get("split") or "").lower())
    if split is None:
        raise TaskLayoutError(f"{where}: split {get('split')!r} is not "
                              "train/test/valid")
    if split == "train" and label == 1:
        raise TaskLayoutError(f"{where}: abnormal image in the train split — training "
                              "images must be normal")
    return label, split


def _mask_path(mask: str | None, base: Path, where: str) -> Path | None:
    if not mask:
        return None
    mask_path = Path(mask) if Path(mask).is_absolute() else base / mask
    if not mask_path.exists():
        raise ImageReadError(mask_path, f"mask file listed at {where} does not exist",
                             "fix the mask column")
    return mask_path


def _unusable(path: Path, slice_index: int | None, where: str) -> ImageReadError | None:
    """Why a listed file cannot be read (missing, or not an image without a slice index), or None."""
    if not path.exists():
        return ImageReadError(path, f"listed at {where} but does not exist",
                              "fix the path column (relative paths are relative to the "
                              "manifest's folder) or skip it (--skip-unreadable; "
                              "skip_unreadable=True in Python)")
    if slice_index is None and file_kind(path) not in ("image", "dicom"):
        return ImageReadError(path, f"listed at {where}: not a supported image file",
                              "convert the file or remove the row (volumes "
                              "need a slice_index column)")
    return None


def from_manifest(csv_path: str | os.PathLike, *, name: str | None = None,
                  skip_unreadable: bool = False, dedupe: str = "train", validate: bool = True,
                  description: str = "") -> Task:
    """Build a task from a CSV manifest (module doc, layout (iii))."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    cols, rows = _manifest_rows(csv_path)
    coll = Collector(skip_unreadable)
    splits: dict[str, list[Sample]] = {"train": [], "test": [], "valid": []}
    seen: set[tuple] = set()

    for lineno, row in enumerate(rows, start=2):
        get = partial(_cell, cols, row)
        where = f"{csv_path}, line {lineno}"
        rel = get("path")
        if not rel:
            raise TaskLayoutError(f"{where}: empty path")
        label, split = _label_and_split(get, where)
        path = Path(rel)
        path = path if path.is_absolute() else base / path
        mask_path = _mask_path(get("mask") or None, base, where)
        si = get("slice_index")
        slice_index = int(si) if si not in (None, "") else None
        kind = get("kind") or ("good" if label == 0 else "abnormal")
        key = (str(path), slice_index, split)
        if key in seen:
            raise TaskLayoutError(f"{where}: {rel} is listed twice in the {split} split")
        seen.add(key)
        error = _unusable(path, slice_index, where)
        if error is not None:
            if not skip_unreadable:
                raise error
            coll.skipped.append(SkippedFile(path, error.problem))
            continue
        splits[split].append(Sample(path, label, kind, mask_path, slice_index))
    if not splits["train"]:
        raise TaskLayoutError(f"{csv_path}: no normal images in the train split")
    task = Task(name or csv_path.stem, splits["train"], splits["test"], splits["valid"],
                root=base, description=description, meta={"layout": "manifest"})
    return finish(task, coll, validate=validate, dedupe=dedupe)


# --------------------------------------------------------------------------- volumes


def volume_slice_samples(image_path: str | os.PathLike,
                         label_path: str | os.PathLike | None = None, *,
                         min_foreground: int | None = None, min_label_pixels: int = 1,
                         normal_kind: str = "good", abnormal_kind: str = "tumor"
                         ) -> tuple[list[Sample], list[Sample]]:
    """(normal, abnormal) slice samples of a volume by the slice rule of
    :mod:`medad.data.volumes` (foreground slices; abnormal = any label > 0)."""
    table = classify_slices(image_path, label_path,
                            min_foreground=MIN_FOREGROUND if min_foreground is None
                            else min_foreground, min_label_pixels=min_label_pixels)
    lp = Path(label_path) if label_path is not None else None
    normal = [Sample(Path(image_path), 0, normal_kind, lp, i) for i in table.normal]
    abnormal = [Sample(Path(image_path), 1, abnormal_kind, lp, i) for i in table.abnormal]
    return normal, abnormal


def from_volume_slices(image_path: str | os.PathLike,
                       label_path: str | os.PathLike | None = None, *,
                       name: str | None = None, seed: int = 0,
                       n_train_normal: int | None = None, slice_split: str = "block",
                       gap: int = 0, min_foreground: int | None = None,
                       min_label_pixels: int = 1, abnormal_kind: str = "tumor",
                       dedupe: str = "train", skip_unreadable: bool = False,
                       validate: bool = True, description: str = "") -> Task:
    """Task of axial slices of one volume (normal slices train/test, tumour slices test).

    ``n_train_normal`` defaults to half the normal slices (rounded down).  ``slice_split``:

    * ``"block"`` (default): the training slices are one contiguous run of
      ``n_train_normal`` normal slices (in z order); its start is drawn with
      ``numpy.random.default_rng(seed)`` among the possible starts, except that ``seed=0``
      takes the lowest slices.  Neighbouring slices are strongly correlated (1 mm apart), so a
      block keeps train/test contact to at most two boundaries; ``gap`` further drops that
      many normal slices on each side of the block from the test split.
    * ``"alternate"``: every other normal slice (even ranks when ``seed`` is even, else odd).
      Each test slice then has a training neighbour — optimistic; for comparison only.

    ``skip_unreadable`` and ``validate`` exist for a uniform builder signature; an unreadable
    volume always raises (there is nothing to skip).
    """
    image_path = Path(image_path)
    normal, abnormal = volume_slice_samples(image_path, label_path,
                                            min_foreground=min_foreground,
                                            min_label_pixels=min_label_pixels,
                                            abnormal_kind=abnormal_kind)
    n = len(normal)
    if n < 2:
        raise TaskLayoutError(f"{image_path}: only {n} normal slice(s) (foreground slices "
                              "without label); need at least 2 to split")
    n_tr = n // 2 if n_train_normal is None else int(n_train_normal)
    if not 1 <= n_tr < n:
        raise TaskLayoutError(f"{image_path}: n_train_normal={n_tr} must be in [1, {n - 1}]")
    if slice_split == "block":
        start = 0 if seed == 0 else int(np.random.default_rng(seed).integers(0, n - n_tr + 1))
        train = normal[start:start + n_tr]
        test_n = normal[: max(0, start - gap)] + normal[start + n_tr + gap:]
    elif slice_split == "alternate":
        train = normal[seed % 2::2][:n_tr]
        ids = {s.slice_index for s in train}
        test_n = [s for s in normal if s.slice_index not in ids]
    else:
        raise ValueError(f"slice_split must be 'block' or 'alternate', not {slice_split!r}")
    task = Task(name or image_path.name.split(".")[0], train, test_n + abnormal,
                root=image_path.parent, description=description,
                meta={"layout": "volume", "slice_split": slice_split, "seed": seed,
                      "train_slices": [s.slice_index for s in train]})
    return finish(task, Collector(skip_unreadable), validate=validate, dedupe=dedupe)
