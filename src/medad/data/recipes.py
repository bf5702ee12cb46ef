"""The papers' benchmarks as data recipes: each builds a paper's split from the public download.

A recipe names the paper and section, the source, its licence, the layout the download unpacks to
(read as it is, nothing to rearrange) and the counts of the split it builds.  ``medad data list``
shows which recipes are present under the data root; ``load_task("d24fad_aptos")`` (or
``--task d24fad_aptos``) builds one.  Draws are seeded and sorted, so a seed gives the same split on
every machine; where a count is drawn, training and test images never overlap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import recipe_layouts as layouts
from .recipe_layouts import Source, pick
from .folders import finish_task
from .registry import data_root
from .samples import Sample, Task, TaskLayoutError

D24FAD = "D²4FAD §4.1"
PDD = "PDD §4.1"


@dataclass(frozen=True)
class Recipe:
    """How to build one paper's task from one public download."""

    name: str
    paper: str
    title: str
    source: str
    licence: str
    folder: str  # under the data root
    layout: str
    read: Callable[[Path], Source]
    #: the split's counts (train normals, test normals, test abnormals); keys in ``drawn`` are seeded draws,
    #: the others take what the source assigns to that split
    counts: dict[str, int]
    drawn: frozenset[str] = frozenset()
    #: abnormal kinds drawn in equal numbers (the test_abnormal count is split between them)
    balanced_kinds: tuple[str, ...] = ()
    #: the unit that must not cross from train to test (default: the image)
    group: Callable[[Sample], str] | None = field(default=None, compare=False)
    #: the paper follows Cai et al. 2022: a MedIAnomaly ``data.json`` in the folder is used when present
    accepts_split_file: bool = False

    def path(self, root: str | os.PathLike | None = None) -> Path:
        return data_root(root) / self.folder

    def present(self, root: str | os.PathLike | None = None) -> bool:
        try:
            return self.path(root).is_dir()
        except FileNotFoundError:
            return False


def _split(recipe: Recipe, source: Source, counts: dict[str, int], seed: int) -> tuple[list[Sample], list[Sample]]:
    rng = np.random.default_rng(seed)
    what = f"{recipe.name} ({recipe.folder})"
    train_pool = source.train_normal or source.normal
    train = pick(train_pool, counts["train"], rng, f"{what} normal training images") \
        if "train" in recipe.drawn else list(train_pool)
    taken = {recipe.group(s) if recipe.group else s.path for s in train}
    normal_pool = [s for s in (source.test_normal or source.normal)
                   if (recipe.group(s) if recipe.group else s.path) not in taken]
    test_normal = pick(normal_pool, counts["test_normal"], rng, f"{what} normal test images") \
        if "test_normal" in recipe.drawn else normal_pool
    abnormal_pool = source.test_abnormal or source.abnormal
    if recipe.group:
        abnormal_pool = [s for s in abnormal_pool if recipe.group(s) not in taken]
    if "test_abnormal" not in recipe.drawn:
        test_abnormal = abnormal_pool
    elif recipe.balanced_kinds:
        each = counts["test_abnormal"] // len(recipe.balanced_kinds)
        test_abnormal = [s for kind in recipe.balanced_kinds
                         for s in pick([s for s in abnormal_pool if s.kind == kind], each, rng, f"{what} {kind} images")]
    else:
        test_abnormal = pick(abnormal_pool, counts["test_abnormal"], rng, f"{what} abnormal test images")
    return train, [*test_normal, *test_abnormal]


def build_recipe(name: str, *, root: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
                 seed: int = 0, counts: dict[str, int] | None = None, skip_unreadable: bool = False,
                 dedupe: str = "train") -> Task:
    """The task of recipe ``name`` from its download (``folder``, default: the recipe's folder under the data root).

    ``counts`` overrides drawn counts (smaller splits for a quick run); training images pixel-identical to
    test images are removed unless ``dedupe="none"``.
    """
    recipe = recipe_named(name)
    unknown = set(counts or {}) - recipe.drawn
    if unknown:
        raise ValueError(f"recipe {name} draws only {', '.join(sorted(recipe.drawn)) or 'nothing'}; "
                         f"cannot set {', '.join(sorted(unknown))}")
    path = Path(folder) if folder is not None else recipe.path(root)
    if not path.is_dir():
        raise TaskLayoutError(f"recipe {name}: {path} does not exist; download {recipe.source} and unpack it there "
                              f"({recipe.layout})")
    if recipe.accepts_split_file and (path / "data.json").is_file():
        recipe = replace(recipe, read=layouts.medianomaly, balanced_kinds=())
    train, test = _split(recipe, recipe.read(path), {**recipe.counts, **(counts or {})}, seed)
    task = Task(name, train, test, root=path, description=f"{recipe.paper}: {recipe.title}",
                meta={"protocol": f"{recipe.paper}; source {recipe.source}; licence {recipe.licence}"})
    return finish_task(task, skip_unreadable=skip_unreadable, dedupe=dedupe)


def recipe_named(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def _bmad(category: str, title: str, counts: dict[str, int]) -> Recipe:
    return Recipe(
        f"pdd_bmad_{category}", PDD, f"BMAD {title} (Uni-Medical)", "BMAD (Bao et al. 2024), github.com/DorisBao/BMAD",
        "CC BY-NC-SA 4.0", f"BMAD/{category.capitalize() if category != 'retinal' else 'Retina_RESC'}",
        "train/good/*.png; test/good/img/*.png; test/Ungood/img/*.png (+ test/Ungood/label/*.png masks)",
        layouts.bmad, counts)


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in [
    Recipe("d24fad_his", D24FAD, "HIS: Camelyon16 breast lymph-node patches",
           "Camelyon16 patches as split by MedIAnomaly (Cai et al.), github.com/caiyu6666/MedIAnomaly",
           "CC0 1.0 (Camelyon16)", "Camelyon16", "images/*.png + data.json (MedIAnomaly split file)",
           layouts.medianomaly, {"train": 700, "test_normal": 400, "test_abnormal": 400},
           frozenset({"train", "test_normal", "test_abnormal"})),
    Recipe("d24fad_lag", D24FAD, "LAG: retinal fundus, glaucoma", "LAG (Li et al. 2019) as split by Cai et al. 2022 "
           "(DDAD / MedIAnomaly data.json)", "research use (LAG authors)", "LAG",
           "images/*.jpg + data.json (Cai et al. split file)", layouts.medianomaly,
           {"train": 1500, "test_normal": 811, "test_abnormal": 911}),
    Recipe("d24fad_aptos", D24FAD, "APTOS 2019: retinal fundus, diabetic retinopathy",
           "kaggle.com/c/aptos2019-blindness-detection", "Kaggle competition rules (non-commercial)",
           "aptos2019-blindness-detection", "train.csv (id_code, diagnosis) + train_images/<id_code>.png",
           layouts.aptos, {"train": 1000, "test_normal": 805, "test_abnormal": 1857},
           frozenset({"train", "test_normal"})),
    Recipe("d24fad_rsna", D24FAD, "RSNA: chest X-ray, lung opacity",
           "kaggle.com/c/rsna-pneumonia-detection-challenge (stage 2 training set)",
           "Kaggle competition rules (non-commercial)", "rsna-pneumonia-detection-challenge",
           "stage_2_detailed_class_info.csv + stage_2_train_images/<patientId>.dcm", layouts.rsna,
           {"train": 1000, "test_normal": 1000, "test_abnormal": 1000},
           frozenset({"train", "test_normal", "test_abnormal"}), accepts_split_file=True),
    Recipe("d24fad_brain_tumor", D24FAD, "Brain Tumor: MRI, glioma + meningioma",
           "kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset (full download)", "CC0 1.0",
           "brain-tumor-mri-dataset", "{Training,Testing}/{notumor,glioma,meningioma,pituitary}/*.jpg",
           layouts.brain_tumor_kaggle, {"train": 1000, "test_normal": 600, "test_abnormal": 600},
           frozenset({"train", "test_normal", "test_abnormal"}), ("glioma", "meningioma"), accepts_split_file=True),
    Recipe("pdd_zhanglab", PDD, "ZhangLab: paediatric chest X-ray, pneumonia",
           "Kermany et al. 2018, data.mendeley.com/datasets/rscbjbr9sj (also Kaggle chest-xray-pneumonia)",
           "CC BY 4.0", "chest_xray", "chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg", layouts.kermany,
           {"train": 1249, "test_normal": 234, "test_abnormal": 390}, frozenset({"train"})),
    Recipe("pdd_chexpert", PDD, "CheXpert: chest X-ray, any finding", "stanfordmlgroup.github.io/competitions/chexpert "
           "(CheXpert-v1.0-small)", "Stanford CheXpert research use agreement", "CheXpert-v1.0-small",
           "train.csv (Path, Frontal/Lateral, No Finding, findings) + train/patient*/study*/view*_frontal.jpg",
           layouts.chexpert, {"train": 4499, "test_normal": 250, "test_abnormal": 250},
           frozenset({"train", "test_normal", "test_abnormal"}), group=layouts.patient_of),
    Recipe("pdd_headct", PDD, "HeadCT: head CT, hemorrhage", "kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
           "see the Kaggle page (not stated in the download)", "head-ct-hemorrhage",
           "labels.csv (id, hemorrhage) + head_ct/head_ct/NNN.png", layouts.headct_kaggle,
           {"train": 60, "test_normal": 40, "test_abnormal": 100}, frozenset({"train", "test_normal"})),
    Recipe("pdd_brainmri", PDD, "BrainMRI: brain MRI, tumour",
           "kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
           "see the Kaggle page (not stated in the download)", "brain-mri-images-for-brain-tumor-detection",
           "brain_tumor_dataset/{no,yes}/* (98 no, 155 yes; PDD reports 154 abnormal)", layouts.brainmri_kaggle,
           {"train": 58, "test_normal": 40, "test_abnormal": 155}, frozenset({"train", "test_normal"})),
    _bmad("brain", "brain MRI (BraTS 2021 slices)", {"train": 7500, "test_normal": 640, "test_abnormal": 3075}),
    _bmad("liver", "liver CT (BTCV + LiTS)", {"train": 1542, "test_normal": 833, "test_abnormal": 660}),
    _bmad("retinal", "retinal OCT (RESC)", {"train": 4297, "test_normal": 1041, "test_abnormal": 764}),
]}
