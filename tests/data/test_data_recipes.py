"""The papers' data recipes, each on a small synthetic folder laid out as its public download."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datahelpers import grey_image, save_png, write_dicom

from medad.data.recipes import RECIPES, build_recipe
from medad.data.tasks import TaskLayoutError, load_task

_SEEDS = itertools.count(1000)


def image(path: Path) -> Path:
    """A small PNG (or DICOM for .dcm) with pixels no other test image has."""
    if path.suffix == ".dcm":
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_dicom(path, grey_image(next(_SEEDS)).astype("uint16"))
    return save_png(path, grey_image(next(_SEEDS)))


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def medianomaly(root: Path, train: int, normal: int, abnormal: int) -> None:
    names = {"train": [f"tr{i}.png" for i in range(train)], "n": [f"n{i}.png" for i in range(normal)],
             "a": [f"a{i}.png" for i in range(abnormal)]}
    for name in itertools.chain(*names.values()):
        image(root / "images" / name)
    (root / "data.json").write_text(json.dumps({"train": {"0": names["train"], "unlabeled": {"0": [], "1": []}},
                                                "test": {"0": names["n"], "1": names["a"]}}))


def aptos(root: Path) -> None:
    diagnoses = [0] * 8 + [1, 2, 3, 4, 2]
    for i in range(len(diagnoses)):
        image(root / "train_images" / f"id{i}.png")
    write_csv(root / "train.csv", "id_code,diagnosis", [f"id{i},{d}" for i, d in enumerate(diagnoses)])


def rsna(root: Path) -> None:
    classes = ["Normal"] * 7 + ["Lung Opacity"] * 3 + ["No Lung Opacity / Not Normal"] * 2
    for i in range(len(classes)):
        image(root / "stage_2_train_images" / f"p{i}.dcm")
    rows = [f"p{i},{c}" for i, c in enumerate(classes)] + ["p8,Lung Opacity"]  # a second box of p8
    write_csv(root / "stage_2_detailed_class_info.csv", "patientId,class", rows)


def brain_tumor(root: Path) -> None:
    for split, kind, n in [("Training", "notumor", 5), ("Testing", "notumor", 3), ("Training", "glioma", 2),
                           ("Testing", "glioma", 1), ("Training", "meningioma", 1), ("Testing", "meningioma", 2),
                           ("Training", "pituitary", 2), ("Testing", "pituitary", 1)]:
        for i in range(n):
            image(root / split / kind / f"{split[:2]}-{kind}{i}.jpg".replace(".jpg", ".png"))


def kermany(root: Path) -> None:
    for split, kind, n in [("train", "NORMAL", 6), ("train", "PNEUMONIA", 2), ("test", "NORMAL", 3),
                           ("test", "PNEUMONIA", 4), ("val", "NORMAL", 1)]:
        for i in range(n):
            image(root / "chest_xray" / split / kind / f"{kind}-{i}.jpeg".replace(".jpeg", ".png"))


def chexpert(root: Path) -> None:
    rows = []
    for patient in range(8):
        for view, frontal in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
            rel = f"CheXpert-v1.0-small/train/patient{patient:05d}/study1/{view}.png"
            image(root.parent / rel)
            normal = patient < 5
            rows.append(f"{rel},Female,50,{frontal},AP,{'1.0' if normal else ''},{'' if normal else '1.0'},")
    write_csv(root / "train.csv", "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Edema,Support Devices", rows)


def headct(root: Path) -> None:
    labels = [0] * 6 + [1] * 3
    for i in range(len(labels)):
        image(root / "head_ct" / "head_ct" / f"{i:03d}.png")
    write_csv(root / "labels.csv", "id, hemorrhage", [f"{i},{label}" for i, label in enumerate(labels)])


def brainmri(root: Path) -> None:
    for kind, n in (("no", 6), ("yes", 4)):
        for i in range(n):
            image(root / "brain_tumor_dataset" / kind / f"{i} {kind}.png")


def bmad(root: Path, masks: bool = True) -> None:
    for i in range(4):
        image(root / "train" / "good" / f"{i}.png")
    for i in range(2):
        image(root / "test" / "good" / "img" / f"g{i}.png")
    for i in range(3):
        image(root / "test" / "Ungood" / "img" / f"u{i}.png")
        if masks:
            save_png(root / "test" / "Ungood" / "label" / f"u{i}.png", (grey_image(i) > 128).astype("uint8") * 255)


#: recipe → (writer of a synthetic download, smaller drawn counts, expected train / test normal / test abnormal)
CASES = {
    "d24fad_his": (lambda r: medianomaly(r, 6, 4, 4), {"train": 3, "test_normal": 2, "test_abnormal": 2}, (3, 2, 2)),
    "d24fad_lag": (lambda r: medianomaly(r, 5, 3, 4), {}, (5, 3, 4)),
    "d24fad_aptos": (aptos, {"train": 5, "test_normal": 3}, (5, 3, 5)),
    "d24fad_rsna": (rsna, {"train": 4, "test_normal": 3, "test_abnormal": 3}, (4, 3, 3)),
    "d24fad_brain_tumor": (brain_tumor, {"train": 5, "test_normal": 3, "test_abnormal": 4}, (5, 3, 4)),
    "pdd_zhanglab": (kermany, {"train": 5}, (5, 3, 4)),
    "pdd_chexpert": (chexpert, {"train": 3, "test_normal": 2, "test_abnormal": 3}, (3, 2, 3)),
    "pdd_headct": (headct, {"train": 4, "test_normal": 2}, (4, 2, 3)),
    "pdd_brainmri": (brainmri, {"train": 4, "test_normal": 2}, (4, 2, 4)),
    "pdd_bmad_brain": (bmad, {}, (4, 2, 3)),
    "pdd_bmad_liver": (bmad, {}, (4, 2, 3)),
    "pdd_bmad_retinal": (lambda r: bmad(r, masks=False), {}, (4, 2, 3)),
}


def test_every_recipe_has_a_test_case_and_states_its_source():
    assert set(CASES) == set(RECIPES)
    for recipe in RECIPES.values():
        assert recipe.source and recipe.licence and recipe.layout and set(recipe.counts) == {
            "train", "test_normal", "test_abnormal"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recipe_builds_the_papers_split_from_the_download_layout(name, tmp_path):
    write, counts, (n_train, n_normal, n_abnormal) = CASES[name]
    recipe = RECIPES[name]
    folder = tmp_path / recipe.folder
    write(folder)
    task = build_recipe(name, root=tmp_path, seed=3, counts=counts)
    assert len(task.train) == n_train and all(s.label == 0 for s in task.train)
    assert sum(s.label == 0 for s in task.test) == n_normal
    assert sum(s.label == 1 for s in task.test) == n_abnormal
    assert not {s.path for s in task.train} & {s.path for s in task.test}
    assert all(s.path.is_file() for s in task.train + task.test)
    again = load_task(name, root=tmp_path, seed=3, counts=counts)
    assert [s.path for s in again.train + again.test] == [s.path for s in task.train + task.test]
    assert recipe.present(tmp_path)


def test_drawn_counts_follow_the_seed_and_kinds_are_balanced(tmp_path):
    brain_tumor(tmp_path / "brain-tumor-mri-dataset")
    draws = [build_recipe("d24fad_brain_tumor", root=tmp_path, seed=seed, counts={"train": 4, "test_normal": 2,
                                                                                  "test_abnormal": 4})
             for seed in (0, 1)]
    assert [s.path for s in draws[0].train] != [s.path for s in draws[1].train]
    assert sorted(s.kind for s in draws[0].test if s.label) == ["glioma"] * 2 + ["meningioma"] * 2


def test_chexpert_keeps_each_patient_on_one_side(tmp_path):
    chexpert(tmp_path / "CheXpert-v1.0-small")
    task = build_recipe("pdd_chexpert", root=tmp_path, counts={"train": 3, "test_normal": 2, "test_abnormal": 3})
    patients = {s.path.parent.parent.name for s in task.train}
    assert not patients & {s.path.parent.parent.name for s in task.test}
    assert all("frontal" in s.path.name for s in task.train + task.test)


def test_bmad_abnormal_images_carry_their_masks(tmp_path):
    bmad(tmp_path / "BMAD" / "Brain")
    task = build_recipe("pdd_bmad_brain", root=tmp_path)
    assert all(s.mask_path is not None and s.mask_path.name == s.path.name for s in task.test if s.label)


def test_a_split_file_is_used_where_the_paper_follows_cai_et_al(tmp_path):
    medianomaly(tmp_path / "rsna-pneumonia-detection-challenge", 5, 3, 3)
    task = build_recipe("d24fad_rsna", root=tmp_path, counts={"train": 4, "test_normal": 3, "test_abnormal": 3})
    assert all(s.path.parent.name == "images" for s in task.train + task.test)


def test_an_incomplete_download_names_what_is_missing(tmp_path):
    aptos(tmp_path / "aptos2019-blindness-detection")
    with pytest.raises(TaskLayoutError, match="holds 8 images, the recipe needs 1000"):
        build_recipe("d24fad_aptos", root=tmp_path)
    with pytest.raises(TaskLayoutError, match="labels.csv not found"):
        (tmp_path / "head-ct-hemorrhage" / "head_ct").mkdir(parents=True)
        build_recipe("pdd_headct", root=tmp_path)
    with pytest.raises(TaskLayoutError, match="download .*kaggle.com/c/rsna"):
        build_recipe("d24fad_rsna", root=tmp_path)
    with pytest.raises(ValueError, match="draws only"):
        build_recipe("d24fad_lag", root=tmp_path, counts={"train": 3})


def test_data_list_shows_which_recipes_are_present(tmp_path):
    headct(tmp_path / "head-ct-hemorrhage")
    result = subprocess.run([sys.executable, "-m", "medad.cli.main", "data", "list"], capture_output=True, text=True,
                            env={**os.environ, "MEDAD_DATA_ROOT": str(tmp_path)}, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "present" in lines["pdd_headct"] and "absent" in lines["pdd_chexpert"]
    assert "D²4FAD §4.1" in lines["d24fad_aptos"]
