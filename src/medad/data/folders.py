"""Tasks from folder layouts: MVTec (``train/good``, ``test/<kind>``) and unsplit (``all/<label>``).

Also what every builder shares: the label rule for folder names, listing image files
(:class:`Collector`) and finishing a task (:func:`finish`: decode every image, handle unreadable
files, remove training duplicates).  The layouts are described in :mod:`medad.data.tasks`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .io import ImageReadError, file_kind
from .leakage import dedupe_task, pixel_hash
from .near_duplicates import clean_task
from .samples import Sample, SkippedFile, Task, TaskLayoutError

__all__ = ["NORMAL_NAMES", "Collector", "detect_layout", "finish", "finish_task", "from_mvtec", "from_unsplit",
           "label_of_folder"]

NORMAL_NAMES = frozenset({"good", "normal", "notumor", "no", "healthy", "0_normal"})
_NORMAL_TOKENS = frozenset(n for n in NORMAL_NAMES if re.fullmatch(r"[a-z]+", n))
_JUNK = frozenset({"thumbs.db", "desktop.ini"})
_VALID_NAMES = ("valid", "val", "validation")


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


class Collector:
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


def _validate(task: Task, collector: Collector, *, validate: bool) -> None:
    """Decode (hash) every sample; unreadable ones raise or, when skipping, are recorded."""
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
        dedupe_task(task)
        clean_task(task)
    task.meta["dedupe"] = dedupe
    return task


def finish(task: Task, collector: Collector, *, validate: bool, dedupe: str) -> Task:
    """Validate (decode) every sample, handle unreadable files, apply dedupe."""
    if dedupe not in ("train", "none"):
        raise ValueError(f"dedupe must be 'train' or 'none', not {dedupe!r}")
    _validate(task, collector, validate=validate or dedupe != "none")
    return _check_and_dedupe(task, dedupe)


def finish_task(task: Task, *, skip_unreadable: bool = False, dedupe: str = "train") -> Task:
    """Check a task built from explicit sample lists as the folder builders do: decode every image,
    handle unreadable files (``skip_unreadable``) and remove training duplicates (``dedupe``)."""
    return finish(task, Collector(skip_unreadable), validate=True, dedupe=dedupe)


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


def _eval_split(split_dir: Path, gt_root: Path | None, coll: Collector, labels,
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
    coll = Collector(skip_unreadable)
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
    return finish(task, coll, validate=validate, dedupe=dedupe)


def _order(s: Sample) -> str:
    return s.path.as_posix()


def _split_normals(normals: list[Sample], n_train: int, n_test: int, seed: int,
                   group_duplicates: bool, group_of: Callable[[Path], str] | None = None,
                   ) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Seeded, group-aware split: identical images (or one ``group_of`` key, e.g. a patient) stay together."""
    groups: dict[str, list[Sample]] = {}
    for i, s in enumerate(normals):
        if group_of is not None:
            key = group_of(s.path)
        else:
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
                 dedupe: str = "train", validate: bool = True, description: str = "",
                 group_of: Callable[[Path], str] | None = None) -> Task:
    """Build a task from ``all/normal`` + ``all/<kind>`` (module doc, layout (ii)).

    ``root`` may be the folder holding ``all/`` or the pool of label folders itself.  The
    normals are ordered by relative path, grouped by pixel hash (unless ``dedupe="none"``),
    the groups permuted by ``numpy.random.default_rng(seed)`` and assigned greedily: to train
    while it has room for the whole group, else to test while it has room, else unused
    (``task.meta["unused_normal"]``).  Defaults: ``n_train_normal = n // 2``,
    ``n_test_normal = n − n_train_normal``.

    ``group_of`` maps a file to its group (a patient, a woman): a group is never split, groups that hold
    an abnormal image go wholly to test, and only whole all-normal groups are drawn for training.
    """
    root = Path(root)
    pool = root / "all" if (root / "all").is_dir() else root
    if not pool.is_dir():
        raise TaskLayoutError(f"{root}: not a folder")
    coll = Collector(skip_unreadable)
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
    if group_of is not None:
        abnormal_groups = {group_of(s.path) for s in abnormal}
        held = [s for s in normals if group_of(s.path) in abnormal_groups]
        free = [s for s in normals if group_of(s.path) not in abnormal_groups]
        train, test_normal, unused = _split_normals(free, n_tr, max(0, n_te - len(held)), seed,
                                                    group_duplicates=False, group_of=group_of)
        test_normal = held + test_normal
    else:
        train, test_normal, unused = _split_normals(normals, n_tr, n_te, seed,
                                                    group_duplicates=dedupe != "none")
    task.train = sorted(train, key=_order)
    task.test = sorted(test_normal, key=_order) + abnormal
    task.meta.update(n_normal=n, unused_normal=len(unused),
                     split_shortfall=(n_tr - len(train)) + (n_te - len(test_normal)))
    return _check_and_dedupe(task, dedupe)


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
