"""Readers of the papers' public downloads, each in the download's own layout → labelled samples.

Every reader returns the images of one source by role; :mod:`medad.data.recipes` turns them into
a task with the paper's split.  Missing files or folders raise :class:`TaskLayoutError` naming
what the layout needs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .samples import Sample, TaskLayoutError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Source:
    """The images of one download: normals and abnormals (by kind), split where the source splits them."""

    train_normal: list[Sample] = field(default_factory=list)
    test_normal: list[Sample] = field(default_factory=list)
    test_abnormal: list[Sample] = field(default_factory=list)
    #: normals / abnormals the source does not assign to a split (the recipe draws them)
    normal: list[Sample] = field(default_factory=list)
    abnormal: list[Sample] = field(default_factory=list)


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise TaskLayoutError(f"{path} not found: the {what} layout needs it; is the download complete?")
    return path


def images_in(folder: Path, label: int, kind: str, what: str) -> list[Sample]:
    """The images directly or recursively under ``folder``, sorted, as samples of one label and kind."""
    files = sorted(p for p in require(folder, what).rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise TaskLayoutError(f"{folder} holds no images: the {what} layout needs them there")
    return [Sample(path, label, kind) for path in files]


def pick(samples: Sequence[Sample], n: int, rng: np.random.Generator, what: str) -> list[Sample]:
    """``n`` of ``samples`` drawn without replacement (sorted by path), or an error naming the shortfall."""
    if len(samples) < n:
        raise TaskLayoutError(f"{what}: the download holds {len(samples)} images, the recipe needs {n}; "
                              "is the download complete?")
    chosen = rng.choice(len(samples), size=n, replace=False)
    return sorted((samples[i] for i in chosen), key=lambda s: s.path.as_posix())


def _csv_rows(path: Path, what: str) -> list[dict[str, str]]:
    with open(require(path, what), newline="", encoding="utf-8") as handle:
        return [{key.strip(): (value or "").strip() for key, value in row.items()} for row in csv.DictReader(handle)]


# --------------------------------------------------------------------------- MedIAnomaly / Cai et al. split file


def medianomaly(root: Path) -> Source:
    """``images/`` + ``data.json`` ({"train": {"0": [...]}, "test": {"0": [...], "1": [...]}}), the split
    files published with Cai et al. (DDAD, MICCAI 2022) and MedIAnomaly (MedIA 2025)."""
    split = json.loads(require(root / "data.json", "MedIAnomaly").read_text(encoding="utf-8"))
    images = require(root / "images", "MedIAnomaly")
    try:
        train, test = split["train"]["0"], split["test"]
        normal, abnormal = test["0"], test["1"]
    except (KeyError, TypeError) as error:
        raise TaskLayoutError(f"{root / 'data.json'} lacks {error}: expected "
                              '{"train": {"0": [...]}, "test": {"0": [...], "1": [...]}}') from None

    def samples(names: Iterable[str], label: int) -> list[Sample]:
        return [Sample(require(images / name, "MedIAnomaly"), label, "normal" if label == 0 else "abnormal")
                for name in names]

    return Source(train_normal=samples(train, 0), test_normal=samples(normal, 0), test_abnormal=samples(abnormal, 1))


# --------------------------------------------------------------------------- Kaggle and challenge downloads


def aptos(root: Path) -> Source:
    """APTOS 2019 (Kaggle): ``train.csv`` (id_code, diagnosis 0–4) + ``train_images/<id_code>.png``."""
    rows = _csv_rows(root / "train.csv", "APTOS 2019")
    folder = require(root / "train_images", "APTOS 2019")
    normal = [Sample(folder / f"{r['id_code']}.png", 0, "no_dr") for r in rows if r["diagnosis"] == "0"]
    abnormal = [Sample(folder / f"{r['id_code']}.png", 1, f"dr{r['diagnosis']}") for r in rows if r["diagnosis"] != "0"]
    return Source(normal=normal, abnormal=abnormal)


def rsna(root: Path) -> Source:
    """RSNA Pneumonia (Kaggle): ``stage_2_detailed_class_info.csv`` (patientId, class) +
    ``stage_2_train_images/<patientId>.dcm``; normal = "Normal", abnormal = "Lung Opacity"."""
    classes: dict[str, str] = {}
    for row in _csv_rows(root / "stage_2_detailed_class_info.csv", "RSNA Pneumonia"):
        classes.setdefault(row["patientId"], row["class"])  # one row per box: the first gives the class
    folder = require(root / "stage_2_train_images", "RSNA Pneumonia")
    return Source(normal=[Sample(folder / f"{pid}.dcm", 0, "normal") for pid, c in classes.items() if c == "Normal"],
                  abnormal=[Sample(folder / f"{pid}.dcm", 1, "lung_opacity") for pid, c in classes.items()
                            if c == "Lung Opacity"])


def brain_tumor_kaggle(root: Path) -> Source:
    """Brain Tumor MRI (Kaggle, Nickparvar): ``Training/`` and ``Testing/``, each with ``notumor``, ``glioma``,
    ``meningioma``, ``pituitary``; both splits pooled (D²4FAD re-splits them), pituitary left out."""
    what = "Brain Tumor MRI"
    normal = [s for split in ("Training", "Testing") for s in images_in(root / split / "notumor", 0, "notumor", what)]
    abnormal = [s for split in ("Training", "Testing") for kind in ("glioma", "meningioma")
                for s in images_in(root / split / kind, 1, kind, what)]
    return Source(normal=normal, abnormal=abnormal)


def kermany(root: Path) -> Source:
    """ZhangLab chest X-ray (Kermany et al., Mendeley / Kaggle): ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}``."""
    base = root / "chest_xray" if (root / "chest_xray").is_dir() else root
    what = "ZhangLab (Kermany) chest X-ray"
    return Source(train_normal=images_in(base / "train" / "NORMAL", 0, "normal", what),
                  test_normal=images_in(base / "test" / "NORMAL", 0, "normal", what),
                  test_abnormal=images_in(base / "test" / "PNEUMONIA", 1, "pneumonia", what))


def chexpert(root: Path) -> Source:
    """CheXpert (Stanford, v1.0-small): ``train.csv`` (Path, Frontal/Lateral, No Finding, findings…) with
    paths relative to the download's parent folder; frontal views only; normal = "No Finding" = 1,
    abnormal = any finding = 1 without "No Finding"."""
    rows = _csv_rows(root / "train.csv", "CheXpert")
    findings = [key for key in (rows[0] if rows else {}) if key not in
                ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Support Devices")]
    normal, abnormal = [], []
    for row in rows:
        if row.get("Frontal/Lateral") != "Frontal":
            continue
        path = root.parent / row["Path"]
        if row.get("No Finding") == "1.0":
            normal.append(Sample(path, 0, "no_finding"))
        elif any(row.get(key) == "1.0" for key in findings):
            abnormal.append(Sample(path, 1, "finding"))
    return Source(normal=normal, abnormal=abnormal)


def patient_of(sample: Sample) -> str:
    """CheXpert's patient folder (``…/patient00001/study1/view1_frontal.jpg`` → ``patient00001``)."""
    return sample.path.parent.parent.name


def headct_kaggle(root: Path) -> Source:
    """Head CT hemorrhage (Kaggle, Kitamura): ``labels.csv`` (id, hemorrhage) + ``head_ct/head_ct/NNN.png``."""
    folder = root / "head_ct" / "head_ct" if (root / "head_ct" / "head_ct").is_dir() else root / "head_ct"
    require(folder, "Head CT")
    rows = _csv_rows(root / "labels.csv", "Head CT")
    samples = [Sample(folder / f"{int(r['id']):03d}.png", int(r["hemorrhage"]),
                      "hemorrhage" if r["hemorrhage"] == "1" else "normal") for r in rows]
    return Source(normal=[s for s in samples if s.label == 0], abnormal=[s for s in samples if s.label == 1])


def brainmri_kaggle(root: Path) -> Source:
    """Brain MRI for tumour detection (Kaggle, Chakrabarty): ``brain_tumor_dataset/{no,yes}`` (or ``no``/``yes``)."""
    base = root / "brain_tumor_dataset" if (root / "brain_tumor_dataset").is_dir() else root
    what = "Brain MRI (navoneel)"
    return Source(normal=images_in(base / "no", 0, "no", what), abnormal=images_in(base / "yes", 1, "tumor", what))


def bmad(root: Path) -> Source:
    """A BMAD category: ``train/good/*.png``; ``test/good/img`` and ``test/Ungood/img`` with pixel masks of the
    same name in ``test/Ungood/label`` where the category has them (brain, liver)."""
    what = "BMAD"
    labels = root / "test" / "Ungood" / "label"
    abnormal = images_in(root / "test" / "Ungood" / "img", 1, "ungood", what)
    if labels.is_dir():
        abnormal = [Sample(s.path, 1, s.kind, require(labels / s.path.name, what)) for s in abnormal]
    return Source(train_normal=images_in(root / "train" / "good", 0, "good", what),
                  test_normal=images_in(root / "test" / "good" / "img", 0, "good", what), test_abnormal=abnormal)
