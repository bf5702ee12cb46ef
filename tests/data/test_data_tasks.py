"""medad.data.tasks: the three layouts, load_task dispatch and every bad-input case."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import dataclasses

import pytest

from datahelpers import grey_image, make_mvtec, make_unsplit, save_png
from medad.data.io import ImageReadError
from medad.data.tasks import (NORMAL_NAMES, Sample, TaskLayoutError, detect_layout,
                              from_manifest, from_mvtec, from_unsplit, label_of_folder,
                              load_sample_image, load_sample_mask, load_task)


# ------------------------------------------------------------------ MVTec layout


def test_mvtec_layout_with_masks_and_valid(tmp_path):
    root = make_mvtec(tmp_path / "t", kinds=("bleed", "tumor"))
    for i in range(2):
        save_png(root / "valid" / "good" / f"v{i}.png", grey_image(500 + i))
        save_png(root / "valid" / "tumor" / f"{i:03d}.png", grey_image(600 + i))
    vm = np.zeros((24, 32), np.uint8)
    vm[0, 0] = 255
    save_png(root / "ground_truth" / "valid" / "tumor" / "001_mask.png", vm)
    with pytest.warns(UserWarning, match=r"without a mask .*'valid/tumor': 1"):
        task = from_mvtec(root)
    assert task.name == "t" and task.root == root
    assert len(task.train) == 4 and all(s.label == 0 and s.kind == "good" for s in task.train)
    c = task.counts()
    assert c["test"]["normal"] == 3 and c["test"]["abnormal"] == 6
    assert c["test"]["kinds"] == {"bleed": 3, "good": 3, "tumor": 3}
    assert c["valid"]["normal"] == 2 and c["valid"]["abnormal"] == 2
    assert task.kinds == ["bleed", "tumor"] and task.has_masks
    # valid masks come from ground_truth/valid/<kind>, never from the test masks
    vt = {s.path.name: s for s in task.valid if s.label == 1}
    assert vt["000.png"].mask_path is None
    assert int(load_sample_mask(vt["001.png"]).sum()) == 1
    # include_kinds naming a kind absent from valid is fine
    assert from_mvtec(root, include_kinds=["bleed"]).counts()["valid"]["abnormal"] == 0
    ab = [s for s in task.test if s.label == 1]
    assert all(s.mask_path is not None and s.mask_path.name == f"{s.path.stem}_mask.png"
               for s in ab)
    assert all(s.mask_path is None for s in task.test if s.label == 0)
    m = load_sample_mask(ab[1])
    assert m.shape == (1, 24, 32) and int(m.sum()) == 5 * 6  # rows 2..6, cols 3..8
    assert load_sample_mask(task.train[0]) is None
    assert load_sample_image(task.train[0]).shape == (3, 24, 32)
    # samples are ordered deterministically
    assert [s.path.name for s in task.train] == ["000.png", "001.png", "002.png", "003.png"]


def test_mvtec_include_exclude_kinds(tmp_path):
    root = make_mvtec(tmp_path / "t", kinds=("glioma", "pituitary"), masks=False)
    t = from_mvtec(root, exclude_kinds=["pituitary"])
    assert t.kinds == ["glioma"]
    t = from_mvtec(root, include_kinds=["pituitary"])
    assert t.kinds == ["pituitary"]
    with pytest.raises(TaskLayoutError, match="kind 'pituatary', which does not exist"):
        from_mvtec(root, exclude_kinds=["pituatary"])


def test_abnormal_folder_in_train_is_refused(tmp_path):
    root = make_mvtec(tmp_path / "t")
    save_png(root / "train" / "tumor" / "x.png", grey_image(999))
    with pytest.raises(TaskLayoutError, match="normal images only"):
        from_mvtec(root)


# ------------------------------------------------------------------ unsplit layout


def test_unsplit_default_half_and_deterministic(tmp_path):
    root = make_unsplit(tmp_path / "pool", n_normal=10, kinds={"bleed": 4, "tumor": 2})
    t1 = from_unsplit(root, seed=3)
    t2 = from_unsplit(root, seed=3)
    assert [s.path for s in t1.train] == [s.path for s in t2.train]
    assert len(t1.train) == 5 and t1.counts()["test"]["normal"] == 5
    assert t1.counts()["test"]["abnormal"] == 6
    assert not {s.path for s in t1.train} & {s.path for s in t1.test}
    other = from_unsplit(root, seed=4)
    assert {s.path for s in other.train} != {s.path for s in t1.train}


def test_unsplit_counts_and_errors(tmp_path):
    root = make_unsplit(tmp_path / "pool", n_normal=10)
    t = from_unsplit(root, n_train_normal=6, n_test_normal=3)
    assert len(t.train) == 6 and t.counts()["test"]["normal"] == 3
    assert t.meta["unused_normal"] == 1
    t = from_unsplit(root, n_test_normal=2)
    assert len(t.train) == 8
    with pytest.raises(TaskLayoutError, match="cannot take 8 train \\+ 4 test normals from 10"):
        from_unsplit(root, n_train_normal=8, n_test_normal=4)


def test_unsplit_keeps_duplicates_on_one_side(tmp_path):
    root = make_unsplit(tmp_path / "pool", n_normal=10)
    normal = root / "all" / "normal"
    shutil.copy(normal / "n03.png", normal / "copy of n03.png")
    shutil.copy(normal / "n07.png", normal / "n07 again.png")
    for seed in range(12):
        t = from_unsplit(root, seed=seed, n_train_normal=6, n_test_normal=6)
        train = {s.path.name for s in t.train}
        assert ("n03.png" in train) == ("copy of n03.png" in train)
        assert ("n07.png" in train) == ("n07 again.png" in train)
        assert len(t.train) == 6 and not t.removed
    # without de-duplication the split is per file and leaks happen for some seed
    leaks = 0
    for seed in range(12):
        t = from_unsplit(root, seed=seed, n_train_normal=6, n_test_normal=6, dedupe="none")
        train = {s.path.name for s in t.train}
        leaks += ("n03.png" in train) != ("copy of n03.png" in train)
    assert leaks > 0


# ------------------------------------------------------------------ CSV manifest


def test_manifest(tmp_path):
    d = tmp_path / "data ü"
    for i in range(3):
        save_png(d / "imgs" / f"n{i}.png", grey_image(i))
    save_png(d / "imgs" / "a0.png", grey_image(10))
    save_png(d / "imgs" / "a1.png", grey_image(11))
    m = np.zeros((24, 32), np.uint8)
    m[0:2, 0:3] = 255
    save_png(d / "masks" / "a0.png", m)
    save_png(d / "imgs" / "v0.png", grey_image(20))
    csv = d / "manifest.csv"
    csv.write_text("\ufeffpath, label ,split,mask\n"
                   "imgs/n0.png,normal,train,\n"
                   "imgs/n1.png,0,train,\n"
                   "imgs/n2.png,normal,test,\n"
                   "imgs/a0.png,abnormal,test,masks/a0.png\n"
                   f"{(d / 'imgs' / 'a1.png').as_posix()},1,test,\n"
                   "imgs/v0.png,0,val,\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"without a mask .*'test/abnormal': 1"):
        t = from_manifest(csv)
    assert t.name == "manifest" and len(t.train) == 2 and len(t.valid) == 1
    assert [s.label for s in t.test] == [0, 1, 1]
    a0 = t.test[1]
    assert a0.kind == "abnormal" and a0.mask_path == d / "masks" / "a0.png"
    assert int(load_sample_mask(a0).sum()) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_task(csv).counts() == t.counts()
        assert load_task(d).counts() == t.counts()  # a folder holding one CSV


@pytest.mark.parametrize("rows,match", [
    ("x.png,sick,test\n", "label 'sick' is not normal/abnormal/0/1"),
    ("x.png,1,train\n", "abnormal image in the train split"),
    ("x.png,0,holdout\n", "split 'holdout' is not train/test/valid"),
    ("missing.png,0,train\n", "does not exist"),
    ("x.png,0,train\nx.png,0,train\n", "listed twice"),
])
def test_manifest_errors_name_the_line(tmp_path, rows, match):
    save_png(tmp_path / "x.png", grey_image(1))
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split\n" + rows)
    with pytest.raises((TaskLayoutError, ImageReadError), match=match) as err:
        from_manifest(csv)
    assert "m.csv" in str(err.value) or "missing.png" in str(err.value)


def test_manifest_missing_column(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("file,label\nx.png,0\n")
    with pytest.raises(TaskLayoutError, match=r"lacks column\(s\) \['path', 'split'\]"):
        from_manifest(csv)


# ------------------------------------------------------------------ bad input


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskLayoutError, match="empty folder"):
        load_task(tmp_path / "empty")


def test_folder_with_no_normal_images(tmp_path):
    root = make_unsplit(tmp_path / "p", n_normal=0, kinds={"tumor": 3})
    with pytest.raises(TaskLayoutError, match="no normal images") as err:
        load_task(root)
    assert "tumor" in str(err.value) and "good" in str(err.value)
    m = make_mvtec(tmp_path / "m", n_train=0)
    (m / "train" / "good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(TaskLayoutError, match="no normal images"):
        from_mvtec(m)


def test_two_normal_folders_are_ambiguous(tmp_path):
    root = make_mvtec(tmp_path / "t")
    save_png(root / "test" / "normal" / "x.png", grey_image(77))
    with pytest.raises(TaskLayoutError, match=r"several normal folders \['good', 'normal'\]"):
        from_mvtec(root)


@pytest.mark.parametrize("name", ["abnormal_normal", "no_tumour", "Not-Good", "healthy ish"])
def test_ambiguous_label_folder_names(tmp_path, name):
    root = make_mvtec(tmp_path / "t", masks=False)
    save_png(root / "test" / name / "x.png", grey_image(77))
    with pytest.raises(TaskLayoutError, match="ambiguous") as err:
        from_mvtec(root)
    assert name in str(err.value)
    # an explicit label resolves it
    t = from_mvtec(root, labels={name: 1})
    assert name in t.kinds


def test_label_of_folder_rules():
    assert NORMAL_NAMES == {"good", "normal", "notumor", "no", "healthy", "0_normal"}
    for n in ["good", "NORMAL", "notumor", "No", "healthy", "0_normal"]:
        assert label_of_folder(n) == 0
    for n in ["tumor", "yes", "1_abnormal", "pneumonia", "abnormal", "notnormal"]:
        assert label_of_folder(n) == 1


def test_non_image_file_in_label_folder(tmp_path):
    root = make_mvtec(tmp_path / "t")
    bad = root / "test" / "tumor" / "readme.txt"
    bad.write_text("notes")
    with pytest.raises(ImageReadError, match="readme.txt") as err:
        from_mvtec(root)
    assert "skip_unreadable=True" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 unreadable file"):
        t = from_mvtec(root, skip_unreadable=True)
    assert [s.path for s in t.skipped] == [bad] and len(t.test) == 6


def test_corrupt_images_are_named_or_skipped_with_count(tmp_path):
    root = make_mvtec(tmp_path / "t", masks=False)
    z = root / "train" / "good" / "zero.png"
    z.write_bytes(b"")
    trunc = root / "test" / "tumor" / "001.png"
    trunc.write_bytes(trunc.read_bytes()[:60])
    fake = root / "test" / "good" / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(ImageReadError, match="zero.png") as err:
        from_mvtec(root)
    assert "2 more unreadable" in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = from_mvtec(root, skip_unreadable=True)
    assert {s.path for s in t.skipped} == {z, trunc, fake}
    assert any("skipped 3 unreadable" in str(w.message) for w in caught)
    assert len(t.train) == 4 and len(t.test) == 5
    assert all(s.path not in {z, trunc, fake} for s in t.train + t.test)


def test_hidden_files_are_ignored_and_counted(tmp_path):
    root = make_mvtec(tmp_path / "t")
    (root / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "test" / "good" / "Thumbs.db").write_bytes(b"\x00\x01")
    (root / "test" / ".ipynb_checkpoints").mkdir()
    save_png(root / "test" / ".ipynb_checkpoints" / "x.png", grey_image(3))
    t = from_mvtec(root)
    assert t.meta["ignored"] == 2 and len(t.train) == 4 and len(t.test) == 6


def test_spaces_and_non_ascii_paths(tmp_path):
    root = make_mvtec(tmp_path / "données IRM 脑" / "task one")
    for p in list((root / "test" / "tumor").iterdir()):
        p.rename(p.with_name("image é " + p.name))
    for p in list((root / "ground_truth" / "tumor").iterdir()):
        p.rename(p.with_name("image é " + p.name))
    t = load_task(str(root))
    ab = [s for s in t.test if s.label == 1]
    assert len(ab) == 3 and all(s.mask_path is not None for s in ab)
    assert load_sample_image(ab[0]).shape == (3, 24, 32)


def test_load_task_dispatch_and_unknown(tmp_path):
    assert detect_layout(make_mvtec(tmp_path / "a")) == "mvtec"
    assert detect_layout(make_unsplit(tmp_path / "b")) == "unsplit"
    flat = tmp_path / "c"
    make_unsplit(flat)
    (flat / "all").rename(tmp_path / "c_pool")
    assert detect_layout(tmp_path / "c_pool") == "unsplit"
    assert len(load_task(tmp_path / "c_pool").train) == 5
    with pytest.raises(TaskLayoutError, match="neither a registry task"):
        load_task("no_such_task_or_folder")


def test_sample_is_frozen_and_validated(tmp_path):
    s = Sample(str(tmp_path / "x.png"), 0, "good")
    assert s.path == tmp_path / "x.png"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.label = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        Sample(tmp_path / "x.png", 2, "good")
    assert hash(s) == hash(Sample(tmp_path / "x.png", 0, "good"))
