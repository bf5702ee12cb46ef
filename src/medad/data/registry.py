"""Registry of the shared medical data sets with the papers' protocols.

A benchmark names a task and gets the same split every time (for a given ``seed``).

Data root (first that applies):

1. the ``root`` argument;
2. the environment variable ``MEDAD_DATA_ROOT``;
3. ``../shared/data`` relative to the current working directory (when it exists);
4. ``../shared/data`` next to the repository holding this package (found by walking up from
   this file to the folder with ``pyproject.toml``).

See ``docs/DATA.md`` for the splits and counts of every task.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from .folders import from_mvtec, from_unsplit
from .manifest import from_volume_slices
from .samples import Task, TaskLayoutError

__all__ = ["REGISTRY", "TaskSpec", "data_root", "list_tasks", "task_info", "build_task",
           "task_path", "ENV_VAR"]

ENV_VAR = "MEDAD_DATA_ROOT"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    folder: str
    modality: str
    description: str
    protocol: str
    builder: Callable[..., Task]
    expected: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root (module doc); raise ``FileNotFoundError`` with advice."""
    if root is not None:
        p = Path(root)
        if not p.is_dir():
            raise FileNotFoundError(f"data root {p} does not exist")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_dir():
            raise FileNotFoundError(f"{ENV_VAR}={env} does not exist")
        return p
    p = Path.cwd().parent / "shared" / "data"
    if p.is_dir():
        return p
    for anc in Path(__file__).resolve().parents:
        if (anc / "pyproject.toml").is_file():
            q = anc.parent / "shared" / "data"
            if q.is_dir():
                return q
            break
    raise FileNotFoundError(
        "shared data not found: pass root=..., set MEDAD_DATA_ROOT, or run from a checkout "
        "with ../shared/data beside it")


# --------------------------------------------------------------------------- builders


def _headct(root: Path, seed: int, **opts) -> Task:
    opts.setdefault("n_train_normal", 60)
    opts.setdefault("n_test_normal", 40)
    return from_unsplit(root, name="headct", seed=seed, **opts)


def _brainmri(root: Path, seed: int, **opts) -> Task:
    opts.setdefault("n_train_normal", 58)
    opts.setdefault("n_test_normal", 40)
    return from_unsplit(root, name="brainmri", seed=seed, **opts)


def _brain_tumor(root: Path, seed: int, include_pituitary: bool = False, **opts) -> Task:
    if "include_kinds" not in opts and "exclude_kinds" not in opts:
        opts["include_kinds"] = (["glioma", "meningioma", "pituitary"] if include_pituitary
                                 else ["glioma", "meningioma"])
    return from_mvtec(root, name="brain_tumor", **opts)


def _mvtec(name: str):
    def build(root: Path, seed: int, **opts) -> Task:
        return from_mvtec(root, name=name, **opts)

    return build


def _half_split(name: str):
    def build(root: Path, seed: int, **opts) -> Task:
        return from_unsplit(root, name=name, seed=seed, **opts)

    return build


def mias_woman(path: Path) -> str:
    """The woman of a mini-MIAS image: images ``mdb(2k−1)`` and ``mdb(2k)`` are her two breasts."""
    match = re.match(r"mdb(\d+)", Path(path).name)
    if match is None:
        raise TaskLayoutError(f"{path}: not a mini-MIAS file name (mdbNNN...)")
    return f"woman{(int(match.group(1)) + 1) // 2:03d}"


def _mias(root: Path, seed: int, **opts) -> Task:
    opts.setdefault("n_train_normal", 60)
    return from_unsplit(root, name="mias", seed=seed, group_of=mias_woman, **opts)


def _brats(root: Path, seed: int, **opts) -> Task:
    return from_volume_slices(root / "BRATS_HG0015_FLAIR.mha", root / "BRATS_HG0015_truth.mha",
                              name="brats_slices", seed=seed, **opts)


REGISTRY: dict[str, TaskSpec] = {
    s.name: s for s in [
        TaskSpec(
            "headct", "headct", "head CT (axial slices)",
            "PDD HeadCT: Kaggle head CT hemorrhage, 100 normal + 100 hemorrhage, no source split",
            "seeded duplicate-aware split of all/normal: 60 train normals; test 40 normal + "
            "all 100 hemorrhage",
            _headct, {"train": 60, "test_normal": 40, "test_abnormal": 100}),
        TaskSpec(
            "brainmri", "brainmri_yesno", "brain MRI",
            "PDD BrainMRI: Kaggle navoneel yes/no, 98 normal + 155 tumour, no source split",
            "seeded duplicate-aware split of all/normal: 58 train normals; test 40 normal + "
            "all 155 tumour",
            _brainmri, {"train": 58, "test_normal": 40, "test_abnormal": 155}),
        TaskSpec(
            "brain_tumor", "brain_tumor_mri_nickparvar", "brain MRI",
            "D24FAD Brain Tumor: Kaggle Nickparvar (224 px), official train/test",
            "train/good minus images duplicated in test; test good + glioma + meningioma "
            "(pituitary only with include_pituitary=True); extra_train_abnormal never used",
            _brain_tumor,
            {"train_files": 1591, "test_normal": 405, "test_abnormal": 606},
            {"include_pituitary": False}),
        TaskSpec(
            "zhanglab", "zhanglab_chest_xray", "paediatric chest X-ray",
            "PDD ZhangLab: Kermany pneumonia (224 px), official split",
            "train/good; test good + pneumonia; extra_train_abnormal never used",
            _mvtec("zhanglab"), {"train": 1341, "test_normal": 234, "test_abnormal": 390}),
        TaskSpec(
            "nih_cxr", "nih_cxr1000_64px", "adult chest X-ray (64 px)",
            "NIH ChestX-ray14 1000-image subset at 64 px (stand-in for RSNA/CheXpert)",
            "given split: train/good; valid good + abnormal (as task.valid); test good + "
            "abnormal",
            _mvtec("nih_cxr"),
            {"train": 300, "valid_normal": 100, "valid_abnormal": 100, "test_normal": 100,
             "test_abnormal": 100}),
        TaskSpec(
            "brats_slices", "brats2012_hg0015_volume/raw", "brain MRI volume (FLAIR slices)",
            "BraTS 2012 HG0015: axial FLAIR slices with > 1000 brain pixels; tumour slices "
            "abnormal with pixel masks from the truth volume",
            "64 normal slices: a contiguous block of 32 train (seed 0: the lowest slices); "
            "test the other 32 normal + all 80 tumour slices",
            _brats, {"train": 32, "test_normal": 32, "test_abnormal": 80}),
        TaskSpec(
            "acrima", "acrima_glaucoma_fundus", "colour fundus (optic-disc crops)",
            "ACRIMA glaucoma: 309 normal + 396 glaucoma fundus crops, no source split "
            "(development task; stand-in for the D²4FAD paper's LAG)",
            "seeded duplicate-aware split of all/normal: half (154) train normals; test the other "
            "155 normal + all 396 glaucoma",
            _half_split("acrima"), {"train": 154, "test_normal": 155, "test_abnormal": 396}),
        TaskSpec(
            "isic", "isic_nevus_melanoma", "dermoscopy (skin lesions)",
            "ISIC nevus vs melanoma: 396 nevus ('normal': benign lesion) + 159 melanoma, no "
            "source split (development task)",
            "seeded duplicate-aware split of all/normal: half (198) train normals; test the other "
            "198 normal + all 159 melanoma",
            _half_split("isic"), {"train": 198, "test_normal": 198, "test_abnormal": 159}),
        TaskSpec(
            "mias", "mias_mammography", "film mammography (MLO)",
            "mini-MIAS: 207 normal + 115 abnormal (mass, calcification, architectural distortion, "
            "asymmetry) of 161 women (development task)",
            "split by woman (mdb(2k−1) + mdb(2k) = woman k): 60 train normals from 30 seeded women "
            "whose both breasts are normal; test every image of the other 131 women (147 normal + "
            "115 abnormal)",
            _mias, {"train": 60, "test_normal": 147, "test_abnormal": 115}),
    ]
}


def list_tasks() -> list[str]:
    """Registry task names."""
    return list(REGISTRY)


def task_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of a registry task under the data root."""
    spec = _spec(name)
    return data_root(root) / spec.folder


def task_info(name: str) -> dict:
    """Description, protocol, folder, expected counts and options of a registry task."""
    spec = _spec(name)
    return {"name": spec.name, "folder": spec.folder, "modality": spec.modality,
            "description": spec.description, "protocol": spec.protocol,
            "expected": dict(spec.expected), "options": dict(spec.options)}


def _spec(name: str) -> TaskSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registry tasks: {', '.join(REGISTRY)}") from None


def build_task(name: str, *, root: str | os.PathLike | None = None, seed: int = 0,
               **options) -> Task:
    """Build a registry task (deduplicated by default; ``dedupe="none"`` to keep)."""
    spec = _spec(name)
    folder = data_root(root) / spec.folder
    if not folder.is_dir():
        raise TaskLayoutError(f"task {name!r}: folder {folder} does not exist under the data "
                              "root")
    task = spec.builder(folder, seed, **options)
    task.description = spec.description
    task.meta["protocol"] = spec.protocol
    return task
