"""The real shared data sets (``../shared/data``): every image loads, registry counts match
SOURCES.md, leakage is removed.  Skipped with a message when the folder is absent."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from datahelpers import SHARED_DATA
from medad.data.check import check_task
from medad.data.io import decode_image, file_kind, to_unit_float
from medad.data.leakage import pixel_hash
from medad.data.tasks import load_sample_image, load_sample_mask, load_task
from medad.data.volumes import classify_slices, read_volume

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"shared data not found at {SHARED_DATA} (../shared/data beside the repository); "
           "real-data tests skipped")

# SOURCES.md: number of image files per set, and modes where it lists them
EXPECTED_FILES = {"headct": 200, "brainmri_yesno": 253, "brain_tumor_mri_nickparvar": 7019,
                  "zhanglab_chest_xray": 5840, "nih_cxr1000_64px": 1000}
EXPECTED_MODES = {"headct": {"RGB": 188, "RGBA": 12},
                  "brain_tumor_mri_nickparvar": {"RGB": 3926, "L": 3093},
                  "zhanglab_chest_xray": {"RGB": 5840},
                  "nih_cxr1000_64px": {"RGB": 979, "RGBA": 21}}
DOC_SUFFIXES = {".md", ".txt", ".csv"}


def _hashes(samples):
    return {pixel_hash(s) for s in samples}


@pytest.mark.slow
def test_every_image_of_every_shared_set_loads():
    """Decodes all ~14 300 images (and the 5 volumes); also fills the hash cache that the
    registry tests below reuse."""
    files, modes, unknown = Counter(), {}, []
    for path in sorted(SHARED_DATA.rglob("*")):
        if not path.is_file() or path.suffix.lower() in DOC_SUFFIXES:
            continue
        top = path.relative_to(SHARED_DATA).parts[0]
        kind = file_kind(path)
        if kind == "image":
            d = decode_image(path)
            x = to_unit_float(d)
            assert x.dtype == np.float32 and x.ndim in (2, 3) and min(x.shape[:2]) >= 32
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.0
            pixel_hash(path, decoded=d.array)
            files[top] += 1
            modes.setdefault(top, Counter())[d.mode] += 1
        elif kind == "volume":
            v = read_volume(path)
            assert v.shape == (176, 216, 160) and v.dtype == np.int16
            files[top] += 1
        else:
            unknown.append(path)
    assert unknown == []
    assert {k: files[k] for k in EXPECTED_FILES} == EXPECTED_FILES
    assert files["brats2012_hg0015_volume"] == 5
    for top, expect in EXPECTED_MODES.items():
        assert dict(modes[top]) == expect, top
    assert set(modes["brainmri_yesno"]) == {"L", "RGB", "RGBA", "P"}


def test_headct_protocol():
    t = load_task("headct", root=SHARED_DATA)
    c = t.counts()
    assert len(t.train) == 58 and c["test"]["normal"] == 40
    assert c["test"]["kinds"]["hemorrhage"] == 100 and c["test"]["abnormal"] == 100
    assert not _hashes(t.train) & _hashes(t.test)
    # 2 of the 60 drawn training normals are near-copies (re-framed or adjacent slices) of test images
    assert len(t.removed) == 2 and t.meta["near_duplicates_removed"] == 2
    again = load_task("headct", root=SHARED_DATA)
    assert [s.path for s in again.train] == [s.path for s in t.train]


def test_brainmri_protocol_keeps_duplicates_on_one_side():
    t = load_task("brainmri", root=SHARED_DATA)
    c = t.counts()
    assert len(t.train) == 48 and c["test"]["normal"] == 40 and c["test"]["abnormal"] == 155
    assert not _hashes(t.train) & _hashes(t.test)
    # 10 of the 58 drawn training normals are resized or re-encoded copies of test images
    assert len(t.removed) == 10 and t.meta["near_duplicates_removed"] == 10
    assert any(" " in s.path.name for s in t.train + t.test)  # file names with spaces


def test_brain_tumor_81_leaked_normals_are_removed_from_train():
    raw = load_task("brain_tumor", root=SHARED_DATA, dedupe="none")
    assert len(raw.train) == 1591
    leaked = _hashes(raw.train) & _hashes(raw.test)
    assert len(leaked) == 81  # SOURCES.md: 81 images in both train/good and test/good
    t = load_task("brain_tumor", root=SHARED_DATA)
    c = t.counts()
    assert c["test"]["normal"] == 405
    assert c["test"]["kinds"] == {"good": 405, "glioma": 300, "meningioma": 306}
    assert not _hashes(t.train) & _hashes(t.test)
    exact = [r for r in t.removed if "pixel-identical" in r.reason]
    assert len({pixel_hash(r.sample) for r in exact}) == 81 and len(exact) == 149
    # near-copies (resized, re-encoded, re-framed) of test normals: most of the rest of train/good
    assert len(t.train) + len(t.removed) == 1591 and len(t.removed) == 951
    assert t.meta["near_duplicates_removed"] == 802
    assert all(all(d.kind == "good" for d in r.duplicate_of) for r in t.removed)
    assert all("extra_train_abnormal" not in s.path.parts for s in t.train + t.test)
    p = load_task("brain_tumor", root=SHARED_DATA, include_pituitary=True)
    assert p.counts()["test"]["kinds"]["pituitary"] == 300 and len(p.train) <= len(t.train)


def test_zhanglab_official_split():
    t = load_task("zhanglab", root=SHARED_DATA)
    c = t.counts()
    assert len(t.train) == 1341 and c["test"]["normal"] == 234
    assert c["test"]["kinds"] == {"good": 234, "pneumonia": 390} and not t.removed


def test_nih_cxr_given_split_with_valid():
    t = load_task("nih_cxr", root=SHARED_DATA)
    c = t.counts()
    assert len(t.train) == 300 and not t.removed
    assert (c["valid"]["normal"], c["valid"]["abnormal"]) == (100, 100)
    assert (c["test"]["normal"], c["test"]["abnormal"]) == (100, 100)


def test_brats_slices():
    root = SHARED_DATA / "brats2012_hg0015_volume" / "raw"
    table = classify_slices(root / "BRATS_HG0015_FLAIR.mha", root / "BRATS_HG0015_truth.mha")
    assert (len(table.foreground), len(table.abnormal), len(table.normal)) == (144, 80, 64)
    t = load_task("brats_slices", root=SHARED_DATA)
    c = t.counts()
    assert len(t.train) == 32 and c["test"]["normal"] == 32 and c["test"]["abnormal"] == 80
    assert [s.slice_index for s in t.train] == list(range(8, 40))
    ab = [s for s in t.test if s.label == 1]
    for s in ab[::10]:
        m, x = load_sample_mask(s), load_sample_image(s)
        assert m.shape == (1, 216, 160) and m.sum() > 0 and x.shape == (3, 216, 160)
        assert 0.5 < float(x.max()) <= 1.0 and float(x.min()) == 0.0
    assert all(float(load_sample_mask(s).sum()) == 0 for s in t.test if s.label == 0)


def test_check_report_on_brain_tumor():
    r = check_task("brain_tumor", root=SHARED_DATA)
    assert r["n_removed"] == 951 and r["n_removed_near_duplicates"] == 802
    assert r["near_duplicates_across_splits_remaining"] == []
    assert len(r["cross_split_duplicates_found"]) == 81
    assert r["cross_split_duplicates_remaining"] == [] and r["unreadable"] == []
    # SOURCES.md: 97 groups in train/good; 67 remain once the near-copies of test images are removed
    assert r["splits"]["train"]["n_duplicate_groups"] == 67
    assert r["splits"]["train"]["sizes"] == {"min_hw": [224, 224], "max_hw": [224, 224],
                                             "distinct": 1}


@pytest.mark.parametrize("name, train, test_normal, test_abnormal",
                         [("acrima", 154, 155, 396), ("isic", 198, 198, 159), ("mias", 60, 147, 115)])
def test_development_tasks(name, train, test_normal, test_abnormal):
    t = load_task(name, root=SHARED_DATA)
    c = t.counts()
    assert (len(t.train), c["test"]["normal"], c["test"]["abnormal"]) == (train, test_normal, test_abnormal)
    assert not t.removed
    again = load_task(name, root=SHARED_DATA)
    assert [s.path for s in again.train] == [s.path for s in t.train]


def test_mias_is_split_by_woman():
    from medad.data.registry import mias_woman

    t = load_task("mias", root=SHARED_DATA)
    train_women = {mias_woman(s.path) for s in t.train}
    assert len(train_women) == 30 and not train_women & {mias_woman(s.path) for s in t.test}
