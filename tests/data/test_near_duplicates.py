"""Near-duplicate detection: resized, re-encoded, grey and cropped copies are found, distinct images are not;
tasks are made near-duplicate-clean; ``medad data check --against`` reports copies across tasks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from datahelpers import SHARED_DATA
from medad.cli.main import main
from medad.data import near_duplicates as nd
from medad.data.check import check_task
from medad.data.leakage import pixel_hash
from medad.data.samples import Sample
from medad.data.tasks import load_task


def _scan(seed: int, size: int = 160) -> np.ndarray:
    """A synthetic 'scan' of one modality: an organ disc of slightly varying place and size, distinct texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    cx, cy = size * (0.5 + rng.uniform(-0.03, 0.03, 2))
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < (size * rng.uniform(0.36, 0.42)) ** 2
    texture = gaussian_filter(rng.random((size, size)), 3.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    return np.clip(30 + disc * (60 + 160 * texture), 0, 255).astype(np.uint8)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _copies(arr: np.ndarray) -> dict[str, Image.Image]:
    img = Image.fromarray(arr)
    w, h = img.size
    c = int(0.04 * w)
    return {"resized": img.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BILINEAR),
            "upsized": img.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
            "jpeg": _jpeg(img, 60),
            "rgb": img.convert("RGB"),
            "cropped": img.crop((c, c, w - c, h - c)),
            "resized_jpeg": _jpeg(img.resize((w // 2, h // 2)), 75)}


@pytest.mark.parametrize("copy", ["resized", "upsized", "jpeg", "rgb", "cropped", "resized_jpeg"])
def test_copies_are_near_duplicates(copy):
    original = _scan(0)
    a = nd.image_fingerprint(original)
    b = nd.image_fingerprint(np.asarray(_copies(original)[copy]))
    assert nd.similarity(a, b)[0, 0] >= nd.THRESHOLD


def test_distinct_images_of_one_modality_are_not():
    prints = np.stack([nd.image_fingerprint(_scan(seed)) for seed in range(12)])
    sim = nd.similarity(prints, prints)
    np.fill_diagonal(sim, 0)
    assert sim.max() < nd.THRESHOLD
    assert nd.similarity(prints[0], prints[0])[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_constant_image_matches_nothing():
    flat = nd.image_fingerprint(np.full((40, 40), 7, np.uint8))
    assert not flat.any()
    assert nd.similarity(flat, nd.image_fingerprint(_scan(1)))[0, 0] < nd.THRESHOLD


def _write(folder, name, img):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    img.save(path)
    return path


def test_pairs_groups_and_task_cleaning(tmp_path):
    good = tmp_path / "train" / "good"
    for seed in range(6):
        _write(good, f"{seed}.png", Image.fromarray(_scan(seed)))
    # the test split holds a resized JPEG copy of training image 2 and a fresh normal
    _write(tmp_path / "test" / "good", "copy_of_2.jpg", _copies(_scan(2))["resized_jpeg"])
    _write(tmp_path / "test" / "good", "fresh.png", Image.fromarray(_scan(50)))
    _write(tmp_path / "test" / "lesion", "a.png", Image.fromarray(_scan(60)))
    task = load_task(tmp_path)
    assert sorted(s.path.name for s in task.train) == ["0.png", "1.png", "3.png", "4.png", "5.png"]
    assert task.meta["near_duplicates_removed"] == 1
    assert "copy_of_2.jpg" in task.removed[0].reason
    raw = load_task(tmp_path, dedupe="none")
    assert len(raw.train) == 6 and "near_duplicates_removed" not in raw.meta
    groups = nd.near_duplicate_groups(raw.train + raw.test)
    assert [sorted(s.path.name for s in g) for g in groups] == [["2.png", "copy_of_2.jpg"]]
    pairs = nd.near_duplicate_pairs(raw.test, raw.train)
    assert [(m.query.path.name, m.match.path.name) for m in pairs] == [("copy_of_2.jpg", "2.png")]


def test_grouped_split_keeps_a_patient_on_one_side(tmp_path):
    for k in range(1, 21):  # 10 patients, two images each; patients 1-3 have one abnormal image
        folder = tmp_path / "all" / ("lesion" if k in (1, 3, 5) else "normal")
        _write(folder, f"p{(k + 1) // 2:02d}_{k:02d}.png", Image.fromarray(_scan(100 + k)))
    from medad.data.folders import from_unsplit

    def patient(path):
        return path.name.split("_")[0]

    task = from_unsplit(tmp_path, seed=3, n_train_normal=6, group_of=patient)
    train_p = {patient(s.path) for s in task.train}
    test_p = {patient(s.path) for s in task.test}
    assert len(task.train) == 6 and not train_p & test_p
    assert {"p01", "p02", "p03"} <= test_p


def test_check_against_reports_copies_in_another_task(tmp_path, capsys):
    for seed in range(4):
        _write(tmp_path / "a" / "train" / "good", f"{seed}.png", Image.fromarray(_scan(seed)))
    _write(tmp_path / "a" / "test" / "good", "t.png", Image.fromarray(_scan(10)))
    _write(tmp_path / "a" / "test" / "lesion", "l.png", Image.fromarray(_scan(11)))
    for seed in range(20, 24):
        _write(tmp_path / "b" / "train" / "good", f"{seed}.png", Image.fromarray(_scan(seed)))
    _write(tmp_path / "b" / "train" / "good", "copy.jpg", _copies(_scan(10))["resized"])
    _write(tmp_path / "b" / "test" / "good", "u.png", Image.fromarray(_scan(30)))
    _write(tmp_path / "b" / "test" / "lesion", "m.png", Image.fromarray(_scan(31)))
    report = check_task(tmp_path / "a", against=[str(tmp_path / "b")])
    test = report["against"][0]["splits"]["test"]
    assert test["normal"]["near_duplicates"] == 1 and test["abnormal"]["near_duplicates"] == 0
    assert test["normal"]["pairs"][0]["copy"].endswith("copy.jpg")
    assert report["against"][0]["splits"]["train"]["normal"]["near_duplicates"] == 0
    assert main(["data", "check", str(tmp_path / "a"), "--against", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "test normal: 1 of 1" in out and "copy.jpg" in out


needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data not found; real-data test skipped")


@needs_shared
def test_brainmri_test_normals_are_copies_of_brain_tumor_training_normals():
    """The known leak: every brainmri test normal is a resized copy of a brain_tumor train/good image."""
    brainmri = load_task("brainmri", root=SHARED_DATA)
    normals = [s for s in brainmri.test if s.label == 0]
    pool = [Sample(p, 0, "good") for p in sorted((SHARED_DATA / "brain_tumor_mri_nickparvar" / "train" / "good").iterdir())]
    found = {m.query.path for m in nd.near_duplicate_pairs(normals, pool)}
    assert len(normals) == 40 and found == {s.path for s in normals}


@needs_shared
@pytest.mark.parametrize("task", ["headct", "zhanglab", "mias", "acrima"])
def test_distinct_real_images_of_one_modality_are_rarely_near_duplicates(task):
    """Within a task's training normals (one per exact duplicate group), at most 7 % of the images have a
    near-copy, so the threshold does not treat every chest X-ray or mammogram as a copy of another.  (The
    flagged head-CT pairs are real: one image re-framed (105/187) and adjacent slices of one patient.)"""
    by_pixels = {pixel_hash(s): s for s in load_task(task, root=SHARED_DATA, dedupe="none").train}
    train = list(by_pixels.values())[:400]
    groups = nd.near_duplicate_groups(train)
    assert sum(len(g) for g in groups) <= 0.07 * len(train)
