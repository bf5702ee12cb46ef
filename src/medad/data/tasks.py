"""Tasks: normal training images + labelled test images (+ masks, + validation).

A :class:`Task` is the unit of anomaly detection (one organ / modality / disease).  It is
built from one of three layouts, without code changes:

(i) **MVTec layout** — ``train/good``, ``test/good``, ``test/<kind>``; optional
    ``ground_truth/<kind>/<stem>_mask.png`` (or ``<stem>.png``); optional ``valid/``
    (also ``val/``, ``validation/``) with the same structure as ``test/``, its masks in
    ``ground_truth/valid/<kind>/`` (so equal file names in test and valid cannot mix up).
(ii) **Unsplit layout** — ``all/normal`` + ``all/<kind>`` (or the label folders directly in
    the root): the normals are split deterministically by ``seed`` into ``n_train_normal``
    training and ``n_test_normal`` test images (default: half train, the rest test); all
    abnormal images go to test.  The split is **duplicate-aware**: pixel-identical images
    are assigned to the same side as one unit, so no normal image leaks from train to test.
(iii) **CSV manifest** — columns ``path,label,split`` (``split`` ∈ train/test/valid,
    ``label`` ∈ normal/abnormal or 0/1), optional ``mask``, ``kind``, ``slice_index``;
    relative paths are relative to the CSV's folder.

Label folders
-------------
Folder names (case-insensitive) in :data:`NORMAL_NAMES` = ``{good, normal, notumor, no,
healthy, 0_normal}`` are normal; every other folder is an anomaly kind.  A name that is not
exactly a normal name but contains one as a word (``abnormal_normal``, ``no_tumour``,
``not-good``…) is **ambiguous** and refused; so are two normal folders in one split (e.g.
``test/good`` and ``test/normal``).  Pass ``labels={"folder": 0 or 1}`` to decide explicitly.

Files
-----
Label folders are searched recursively; entries whose name starts with ``.`` and OS junk
(``Thumbs.db``, ``desktop.ini``) are ignored (counted in ``task.meta["ignored"]``).  A file
with an unsupported suffix, or one that does not decode (empty, truncated, not an image),
raises :class:`~medad.data.io.ImageReadError` naming it; with ``skip_unreadable=True`` it is
skipped with a warning and listed in ``task.skipped``.  Nothing is dropped silently.

Leakage
-------
By default (``dedupe="train"``) training images that are pixel-identical to a test or
validation image are removed from ``train`` and listed in ``task.removed`` with the reason
(see :mod:`medad.data.leakage`); ``dedupe="none"`` keeps them.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

from .io import ImageReadError, file_kind, read_image, read_mask

__all__ = [
    "NORMAL_NAMES",
    "Sample",
    "RemovedSample",
    "SkippedFile",
    "Task",
    "TaskLayoutError",
    "label_of_folder",
    "load_sample_image",
    "load_sample_mask",
    "from_mvtec",
    "from_unsplit",
    "from_manifest",
    "from_volume_slices",
    "volume_slice_samples",
    "detect_layout",
    "load_task",
]

NORMAL_NAMES = frozenset({"good", "normal", "notumor", "no", "healthy", "0_normal"})
_NORMAL_TOKENS = frozenset(n for n in NORMAL_NAMES if re.fullmatch(r"[a-z]+", n))
_JUNK = frozenset({"thumbs.db", "desktop.ini"})
_VALID_NAMES = ("valid", "val", "validation")


class TaskLayoutError(ValueError):
    """A folder or manifest does not form a valid task (message says what to change)."""


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` 0 = normal, 1 = abnormal; ``kind`` = label folder name.

    For a slice of a volume ``path`` is the volume, ``slice_index`` the axial index and
    ``mask_path`` the label volume.
    """

    path: Path
    label: int
    kind: str
    mask_path: Path | None = None
    slice_index: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label!r} for {self.path}")

    @property
    def name(self) -> str:
        """Short display name (file name, plus ``[z=i]`` for slices)."""
        return self.path.name if self.slice_index is None else f"{self.path.name}[z={self.slice_index}]"


@dataclass(frozen=True)
class RemovedSample:
    """A training sample removed because it duplicates evaluation images."""

    sample: Sample
    reason: str
    duplicate_of: tuple[Sample, ...] = ()


@dataclass(frozen=True)
class SkippedFile:
    """A file skipped with ``skip_unreadable=True``."""

    path: Path
    reason: str


@dataclass
class Task:
    """Normal ``train`` samples, labelled ``test`` samples, optional ``valid`` samples."""

    name: str
    train: list[Sample]
    test: list[Sample]
    valid: list[Sample] = field(default_factory=list)
    removed: list[RemovedSample] = field(default_factory=list)
    root: Path | None = None
    description: str = ""
    skipped: list[SkippedFile] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, list[Sample]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    @property
    def kinds(self) -> list[str]:
        """Anomaly kinds in test/valid (sorted)."""
        return sorted({s.kind for s in self.test + self.valid if s.label == 1})

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.test)

    def counts(self) -> dict[str, dict]:
        """``{split: {"normal": n, "abnormal": n, "kinds": {kind: n}}}`` (kinds of all labels)."""
        out = {}
        for split, samples in self.splits.items():
            kinds: dict[str, int] = {}
            for s in samples:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            out[split] = {"normal": sum(s.label == 0 for s in samples),
                          "abnormal": sum(s.label == 1 for s in samples), "kinds": kinds}
        return out

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{self.name}: train {c['train']['normal']} normal"]
        for split in ("valid", "test"):
            if self.splits[split]:
                ab = {s.kind for s in self.splits[split] if s.label == 1}
                kinds = ", ".join(f"{k} {v}" for k, v in sorted(c[split]["kinds"].items())
                                  if k in ab)
                parts.append(f"{split} {c[split]['normal']} normal + {c[split]['abnormal']} "
                             f"abnormal ({kinds})")
        if self.removed:
            parts.append(f"{len(self.removed)} train duplicates of eval images removed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable files skipped")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"Task({self.summary()})"


# --------------------------------------------------------------------------- loading


def load_sample_image(sample: Sample) -> torch.Tensor:
    """Image of a sample as ``3×H×W`` float in ``[0, 1]`` (file or volume slice)."""
    if sample.slice_index is not None:
        from .volumes import read_volume_slice

        return read_volume_slice(sample.path, sample.slice_index)
    return read_image(sample.path)


def load_sample_mask(sample: Sample) -> torch.Tensor | None:
    """Mask of a sample as ``1×H×W`` in ``{0, 1}``, or ``None`` when it has no mask."""
    if sample.mask_path is None:
        return None
    if sample.slice_index is not None:
        from .volumes import read_label_slice

        return read_label_slice(sample.mask_path, sample.slice_index)
    return read_mask(sample.mask_path)


# --------------------------------------------------------------------------- labels


def label_of_folder(name: str, labels: Mapping[str, int] | None = None) -> int:
    """0 for a normal folder name, 1 for an anomaly kind; raise on ambiguous names."""
    if labels:
        for key, value in labels.items():
            if key == name or key.lower() == name.lower():
                if value not in (0, 1):
                    raise ValueError(f"labels[{key!r}] must be 0 or 1, got {value!r}")
                return int(value)
    low = name.strip().lower()
    if low in NORMAL_NAMES:
        return 0
    tokens = set(t for t in re.split(r"[^a-z0-9]+", low) if t)
    hit = tokens & _NORMAL_TOKENS
    if hit:
        raise TaskLayoutError(
            f"label folder '{name}' is ambiguous: it contains the normal word(s) "
            f"{sorted(hit)} but is not one of the normal names {sorted(NORMAL_NAMES)}. "
            f"Rename it (normal → 'good'; anomaly → a name without those words) or pass "
            f"labels={{'{name}': 0 or 1}}")
    return 1


# --------------------------------------------------------------------------- file listing


class _Collector:
    """Lists image files, tracking skipped/ignored entries."""

    def __init__(self, skip_unreadable: bool):
        self.skip = skip_unreadable
        self.skipped: list[SkippedFile] = []
        self.ignored = 0

    def files(self, folder: Path) -> list[Path]:
        out = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                if fn.startswith(".") or fn.lower() in _JUNK:
                    self.ignored += 1
                    continue
                if file_kind(p) in ("image", "dicom"):
                    out.append(p)
                    continue
                reason = (f"suffix '{p.suffix or '(none)'}' is not a supported image format"
                          + (" (volumes are not read from label folders; use a manifest with "
                             "slice_index or from_volume_slices)" if file_kind(p) == "volume"
                             else ""))
                if self.skip:
                    self.skipped.append(SkippedFile(p, reason))
                else:
                    raise ImageReadError(p, reason, "remove or convert the file, or skip it with a warning "
                                                    "(--skip-unreadable; skip_unreadable=True in Python)")
        out.sort(key=lambda q: q.relative_to(folder).as_posix())
        return out


def _subdirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def _loose_images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and file_kind(p) is not None]


def _label_folders(split_dir: Path, labels, *, what: str) -> list[tuple[Path, int]]:
    loose = _loose_images(split_dir)
    if loose:
        raise TaskLayoutError(
            f"{split_dir}: {len(loose)} image file(s) lie directly in the split folder "
            f"(e.g. {loose[0].name}); put them in label sub-folders ({what}/good for normal, "
            f"{what}/<kind> for anomalies)")
    out = [(d, label_of_folder(d.name, labels)) for d in _subdirs(split_dir)]
    normals = [d.name for d, lab in out if lab == 0]
    if len(normals) > 1:
        raise TaskLayoutError(
            f"{split_dir}: several normal folders {normals} — ambiguous; merge them into one "
            f"folder named 'good' (or pass labels={{...}} to mark all but one as anomalies)")
    return out


def _filter_kinds(kinds: Iterable[str], include: Sequence[str] | None,
                  exclude: Sequence[str] | None, where: Path, strict: bool = True) -> set[str]:
    kinds = set(kinds)
    for opt, values in (("include_kinds", include), ("exclude_kinds", exclude)):
        for k in values or ():
            if strict and k not in kinds:
                raise TaskLayoutError(f"{where}: {opt} names kind '{k}', which does not exist; "
                                      f"kinds are {sorted(kinds)}")
    keep = set(include) if include else set(kinds)
    return keep - set(exclude or ())


# --------------------------------------------------------------------------- finishing


def _validate(task: Task, collector: _Collector, *, validate: bool) -> None:
    """Decode (hash) every sample; unreadable ones raise or, when skipping, are recorded."""
    from .leakage import pixel_hash

    task.skipped.extend(collector.skipped)
    collector.skipped = []
    task.meta["ignored"] = task.meta.get("ignored", 0) + collector.ignored
    collector.ignored = 0
    if not validate:
        return
    bad: list[ImageReadError] = []
    for split in ("train", "valid", "test"):
        kept = []
        for s in getattr(task, split):
            try:
                pixel_hash(s)
            except ImageReadError as exc:
                bad.append(exc)
                continue
            kept.append(s)
        setattr(task, split, kept)
    if bad and not collector.skip:
        first = bad[0]
        more = "" if len(bad) == 1 else (
            f" ({len(bad) - 1} more unreadable file(s): "
            + ", ".join(str(e.path) for e in bad[1:4]) + (", ..." if len(bad) > 4 else "") + ")")
        hint = first.hint if "skip_unreadable" in first.hint else (
            first.hint + "; or skip unreadable files with a warning (--skip-unreadable; skip_unreadable=True "
                         "in Python)")
        raise ImageReadError(first.path, first.problem + more, hint)
    task.skipped.extend(SkippedFile(e.path, e.problem) for e in bad)


def _check_and_dedupe(task: Task, dedupe: str) -> Task:
    if dedupe not in ("train", "none"):
        raise ValueError(f"dedupe must be 'train' or 'none', not {dedupe!r}")
    if task.skipped:
        warnings.warn(f"task {task.name!r}: skipped {len(task.skipped)} unreadable file(s), "
                      f"e.g. {task.skipped[0].path}: {task.skipped[0].reason} "
                      f"(all listed in task.skipped)", stacklevel=4)
    if not task.train:
        raise TaskLayoutError(f"task {task.name!r} ({task.root}): no readable normal training "
                              "images")
    if not task.test:
        raise TaskLayoutError(f"task {task.name!r} ({task.root}): no readable test images")
    for what, lab in (("normal", 0), ("abnormal", 1)):
        if not any(s.label == lab for s in task.test):
            warnings.warn(f"task {task.name!r}: the test split has no {what} images, so AUROC "
                          "is undefined", stacklevel=4)
    missing: dict[str, int] = {}
    for split in ("valid", "test"):
        samples = getattr(task, split)
        with_masks = {s.kind for s in samples if s.mask_path is not None}
        for s in samples:
            if s.label == 1 and s.kind in with_masks and s.mask_path is None:
                missing[f"{split}/{s.kind}"] = missing.get(f"{split}/{s.kind}", 0) + 1
    if missing:
        task.meta["missing_masks"] = missing
        warnings.warn(f"task {task.name!r}: abnormal images without a mask although their kind "
                      f"has masks: {missing} (pixel metrics treat them as all-normal pixels)",
                      stacklevel=4)
    if dedupe == "train":
        from .leakage import dedupe_task

        dedupe_task(task)
    task.meta["dedupe"] = dedupe
    return task


def _finish(task: Task, collector: _Collector, *, validate: bool, dedupe: str) -> Task:
    """Validate (decode) every sample, handle unreadable files, apply dedupe."""
    if dedupe not in ("train", "none"):
        raise ValueError(f"dedupe must be 'train' or 'none', not {dedupe!r}")
    _validate(task, collector, validate=validate or dedupe != "none")
    return _check_and_dedupe(task, dedupe)


# --------------------------------------------------------------------------- builders


def _mask_index(gt_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    if not gt_dir.is_dir():
        return index
    for dirpath, dirnames, filenames in os.walk(gt_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            p = Path(dirpath) / fn
            if fn.startswith(".") or file_kind(p) not in ("image", "dicom"):
                continue
            rel = p.relative_to(gt_dir).with_suffix("").as_posix()
            if rel.endswith("_mask"):
                index[rel[: -len("_mask")]] = p
            else:
                index.setdefault(rel, p)
    return index


def _eval_split(split_dir: Path, gt_root: Path | None, coll: _Collector, labels,
                include, exclude, what: str, strict: bool = True) -> list[Sample]:
    folders = _label_folders(split_dir, labels, what=what)
    keep = _filter_kinds([d.name for d, lab in folders if lab == 1], include, exclude, split_dir,
                         strict=strict)
    samples: list[Sample] = []
    for d, lab in folders:
        if lab == 1 and d.name not in keep:
            continue
        masks = _mask_index(gt_root / d.name) if (gt_root is not None and lab == 1) else {}
        for p in coll.files(d):
            m = masks.get(p.relative_to(d).with_suffix("").as_posix()) if masks else None
            samples.append(Sample(p, lab, d.name, m))
    return samples


def from_mvtec(root: str | os.PathLike, *, name: str | None = None,
               include_kinds: Sequence[str] | None = None,
               exclude_kinds: Sequence[str] | None = None,
               labels: Mapping[str, int] | None = None, skip_unreadable: bool = False,
               dedupe: str = "train", validate: bool = True, description: str = "") -> Task:
    """Build a task from the MVTec layout (module doc, layout (i))."""
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise TaskLayoutError(f"{root}: no 'train' folder (MVTec layout needs train/good)")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise TaskLayoutError(f"{root}: no 'test' folder (MVTec layout needs test/good and "
                              "test/<kind>)")
    coll = _Collector(skip_unreadable)
    meta: dict = {"layout": "mvtec"}
    train_folders = _label_folders(train_dir, labels, what="train")
    bad = [d.name for d, lab in train_folders if lab == 1]
    if bad:
        raise TaskLayoutError(
            f"{train_dir}: folder(s) {bad} are not normal — the training split of an anomaly "
            f"detection task holds normal images only (name it 'good'; keep abnormal training "
            f"images outside train/, e.g. in extra_train_abnormal/)")
    train = [Sample(p, 0, d.name) for d, _ in train_folders for p in coll.files(d)]
    if not train and not coll.skipped:
        raise TaskLayoutError(
            f"{train_dir}: no normal images (expected a folder named one of "
            f"{sorted(NORMAL_NAMES)} with images in it)")
    gt = root / "ground_truth"
    gt = gt if gt.is_dir() else None
    test = _eval_split(test_dir, gt, coll, labels, include_kinds, exclude_kinds, "test")
    valid: list[Sample] = []
    vdirs = [root / v for v in _VALID_NAMES if (root / v).is_dir()]
    if len(vdirs) > 1:
        raise TaskLayoutError(f"{root}: several validation folders {[v.name for v in vdirs]}; "
                              "keep one (named 'valid')")
    if vdirs:
        vgt = gt / vdirs[0].name if gt is not None and (gt / vdirs[0].name).is_dir() else None
        valid = _eval_split(vdirs[0], vgt, coll, labels, include_kinds, exclude_kinds,
                            vdirs[0].name, strict=False)
    task = Task(name or root.name, train, test, valid, root=root, description=description,
                meta=meta)
    return _finish(task, coll, validate=validate, dedupe=dedupe)


def _order(s: Sample) -> str:
    return s.path.as_posix()


def _split_normals(normals: list[Sample], n_train: int, n_test: int, seed: int,
                   group_duplicates: bool) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Seeded, duplicate-aware split (identical images stay together)."""
    from .leakage import pixel_hash

    groups: dict[str, list[Sample]] = {}
    for i, s in enumerate(normals):
        key = pixel_hash(s) if group_duplicates else str(i)
        groups.setdefault(key, []).append(s)
    ordered = list(groups.values())
    perm = np.random.default_rng(seed).permutation(len(ordered))
    train, test, unused = [], [], []
    for j in perm:
        g = ordered[j]
        if len(train) + len(g) <= n_train:
            train.extend(g)
        elif len(test) + len(g) <= n_test:
            test.extend(g)
        else:
            unused.extend(g)
    return train, test, unused


def from_unsplit(root: str | os.PathLike, *, name: str | None = None, seed: int = 0,
                 n_train_normal: int | None = None, n_test_normal: int | None = None,
                 include_kinds: Sequence[str] | None = None,
                 exclude_kinds: Sequence[str] | None = None,
                 labels: Mapping[str, int] | None = None, skip_unreadable: bool = False,
                 dedupe: str = "train", validate: bool = True, description: str = "") -> Task:
    """Build a task from ``all/normal`` + ``all/<kind>`` (module doc, layout (ii)).

    ``root`` may be the folder holding ``all/`` or the pool of label folders itself.  The
    normals are ordered by relative path, grouped by pixel hash (unless ``dedupe="none"``),
    the groups permuted by ``numpy.random.default_rng(seed)`` and assigned greedily: to train
    while it has room for the whole group, else to test while it has room, else unused
    (``task.meta["unused_normal"]``).  Defaults: ``n_train_normal = n // 2``,
    ``n_test_normal = n − n_train_normal``.
    """
    root = Path(root)
    pool = root / "all" if (root / "all").is_dir() else root
    if not pool.is_dir():
        raise TaskLayoutError(f"{root}: not a folder")
    coll = _Collector(skip_unreadable)
    folders = _label_folders(pool, labels, what=pool.name)
    if not folders:
        raise TaskLayoutError(f"{pool}: empty folder — expected label folders "
                              "(normal/ and one folder per anomaly kind)")
    normal_dirs = [d for d, lab in folders if lab == 0]
    if not normal_dirs:
        raise TaskLayoutError(
            f"{pool}: no normal images — none of the folders {[d.name for d, _ in folders]} is "
            f"a normal folder (names {sorted(NORMAL_NAMES)}); rename the normal folder to "
            f"'normal' or pass labels={{'<folder>': 0}}")
    keep = _filter_kinds([d.name for d, lab in folders if lab == 1], include_kinds,
                         exclude_kinds, pool)
    normals = [Sample(p, 0, normal_dirs[0].name) for p in coll.files(normal_dirs[0])]
    abnormal = [Sample(p, 1, d.name) for d, lab in folders if lab == 1 and d.name in keep
                for p in coll.files(d)]
    if not normals:
        raise TaskLayoutError(f"{normal_dirs[0]}: no normal images in the normal folder")
    task = Task(name or root.name, [], [], root=root, description=description,
                meta={"layout": "unsplit", "seed": seed})
    if dedupe not in ("train", "none"):
        raise ValueError(f"dedupe must be 'train' or 'none', not {dedupe!r}")
    # validate the pool first (so unreadable normals do not distort the split)
    task.train, task.test = normals, abnormal
    _validate(task, coll, validate=validate or dedupe != "none")
    normals, abnormal = task.train, task.test
    n = len(normals)
    if n == 0:
        raise TaskLayoutError(f"{normal_dirs[0]}: no readable normal images")
    n_tr = n // 2 if n_train_normal is None and n_test_normal is None else n_train_normal
    if n_tr is None:
        n_tr = n - int(n_test_normal)
    n_te = n - n_tr if n_test_normal is None else int(n_test_normal)
    if n_tr < 1 or n_te < 0 or n_tr + n_te > n:
        raise TaskLayoutError(
            f"{pool}: cannot take {n_tr} train + {n_te} test normals from {n} normal images "
            f"(n_train_normal must be ≥ 1 and n_train_normal + n_test_normal ≤ {n})")
    train, test_normal, unused = _split_normals(normals, n_tr, n_te, seed,
                                                group_duplicates=dedupe != "none")
    task.train = sorted(train, key=_order)
    task.test = sorted(test_normal, key=_order) + abnormal
    task.meta.update(n_normal=n, unused_normal=len(unused),
                     split_shortfall=(n_tr - len(train)) + (n_te - len(test_normal)))
    return _check_and_dedupe(task, dedupe)


_LABEL_WORDS = {"0": 0, "1": 1, "normal": 0, "abnormal": 1, "anomaly": 1, "anomalous": 1,
                "good": 0, "bad": 1}
_SPLIT_WORDS = {"train": "train", "test": "test", "valid": "valid", "val": "valid",
                "validation": "valid"}


def from_manifest(csv_path: str | os.PathLike, *, name: str | None = None,
                  skip_unreadable: bool = False, dedupe: str = "train", validate: bool = True,
                  description: str = "") -> Task:
    """Build a task from a CSV manifest (module doc, layout (iii))."""
    csv_path = Path(csv_path)
    base = csv_path.parent
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
    coll = _Collector(skip_unreadable)
    splits: dict[str, list[Sample]] = {"train": [], "test": [], "valid": []}
    seen: set[tuple] = set()

    def get(row, col):
        c = cols.get(col)
        v = row.get(c) if c else None
        return v.strip() if isinstance(v, str) else v

    for lineno, row in enumerate(rows, start=2):
        where = f"{csv_path}, line {lineno}"
        rel = get(row, "path")
        if not rel:
            raise TaskLayoutError(f"{where}: empty path")
        lab_s = (get(row, "label") or "").lower()
        if lab_s in _LABEL_WORDS:
            label = _LABEL_WORDS[lab_s]
        elif lab_s in NORMAL_NAMES:
            label = 0
        else:
            raise TaskLayoutError(f"{where}: label {get(row, 'label')!r} is not "
                                  "normal/abnormal/0/1")
        split = _SPLIT_WORDS.get((get(row, "split") or "").lower())
        if split is None:
            raise TaskLayoutError(f"{where}: split {get(row, 'split')!r} is not "
                                  "train/test/valid")
        if split == "train" and label == 1:
            raise TaskLayoutError(f"{where}: abnormal image in the train split — training "
                                  "images must be normal")
        path = Path(rel)
        path = path if path.is_absolute() else base / path
        mask = get(row, "mask") or None
        mask_path = None
        if mask:
            mask_path = Path(mask) if Path(mask).is_absolute() else base / mask
            if not mask_path.exists():
                raise ImageReadError(mask_path, f"mask file listed at {where} does not exist",
                                     "fix the mask column")
        si = get(row, "slice_index")
        slice_index = int(si) if si not in (None, "") else None
        kind = get(row, "kind") or ("good" if label == 0 else "abnormal")
        key = (str(path), slice_index, split)
        if key in seen:
            raise TaskLayoutError(f"{where}: {rel} is listed twice in the {split} split")
        seen.add(key)
        if not path.exists():
            if skip_unreadable:
                coll.skipped.append(SkippedFile(path, f"listed at {where} but does not exist"))
                continue
            raise ImageReadError(path, f"listed at {where} but does not exist",
                                 "fix the path column (relative paths are relative to the "
                                 "manifest's folder) or skip it (--skip-unreadable; "
                                 "skip_unreadable=True in Python)")
        if slice_index is None and file_kind(path) not in ("image", "dicom"):
            reason = f"listed at {where}: not a supported image file"
            if skip_unreadable:
                coll.skipped.append(SkippedFile(path, reason))
                continue
            raise ImageReadError(path, reason, "convert the file or remove the row (volumes "
                                               "need a slice_index column)")
        splits[split].append(Sample(path, label, kind, mask_path, slice_index))
    if not splits["train"]:
        raise TaskLayoutError(f"{csv_path}: no normal images in the train split")
    task = Task(name or csv_path.stem, splits["train"], splits["test"], splits["valid"],
                root=base, description=description, meta={"layout": "manifest"})
    return _finish(task, coll, validate=validate, dedupe=dedupe)


# --------------------------------------------------------------------------- volumes


def volume_slice_samples(image_path: str | os.PathLike,
                         label_path: str | os.PathLike | None = None, *,
                         min_foreground: int | None = None, min_label_pixels: int = 1,
                         normal_kind: str = "good", abnormal_kind: str = "tumor"
                         ) -> tuple[list[Sample], list[Sample]]:
    """(normal, abnormal) slice samples of a volume by the slice rule of
    :mod:`medad.data.volumes` (foreground slices; abnormal = any label > 0)."""
    from .volumes import MIN_FOREGROUND, classify_slices

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
    return _finish(task, _Collector(skip_unreadable), validate=validate, dedupe=dedupe)


# --------------------------------------------------------------------------- dispatch


def detect_layout(path: str | os.PathLike) -> str:
    """``"manifest"``, ``"mvtec"``, ``"unsplit"`` for a path; raise when none fits.

    Order: a ``.csv`` file → manifest; a folder with ``train/`` or ``test/`` → MVTec; with
    ``all/`` → unsplit; with exactly one ``.csv`` file → that manifest; with sub-folders →
    unsplit (the sub-folders are the label folders).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: does not exist")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise TaskLayoutError(f"{path}: a task is a folder or a .csv manifest, not a file")
    entries = [e for e in path.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise TaskLayoutError(f"{path}: empty folder — expected train/ + test/ (MVTec "
                              "layout), all/<label> folders, or a CSV manifest")
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "mvtec"
    if (path / "all").is_dir():
        return "unsplit"
    csvs = [e for e in entries if e.suffix.lower() == ".csv" and e.is_file()]
    if len(csvs) == 1:
        return "manifest"
    if _subdirs(path):
        return "unsplit"
    raise TaskLayoutError(f"{path}: cannot tell the layout — expected train/ + test/ (MVTec), "
                          "all/<label> folders, label folders, or one CSV manifest")


def load_task(name_or_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
              seed: int = 0, **options) -> Task:
    """A registry task name (``headct``, ``brain_tumor``, …) or a folder / CSV path → Task.

    ``root`` is the data root for registry names; ``options`` go to the builder (e.g.
    ``dedupe``, ``skip_unreadable``, ``n_train_normal``, ``include_pituitary``).
    """
    from . import registry

    if isinstance(name_or_path, str) and name_or_path in registry.REGISTRY:
        return registry.build_task(name_or_path, root=root, seed=seed, **options)
    path = Path(name_or_path)
    if not path.exists():
        raise TaskLayoutError(
            f"{name_or_path!r} is neither a registry task ({', '.join(registry.list_tasks())}) "
            "nor an existing folder or CSV file")
    layout = detect_layout(path)
    if layout == "manifest":
        if path.is_dir():
            path = next(e for e in path.iterdir() if e.suffix.lower() == ".csv")
        return from_manifest(path, **options)
    if layout == "mvtec":
        return from_mvtec(path, **options)
    return from_unsplit(path, seed=seed, **options)
