"""medad.data.leakage: pixel-hash duplicates within/across splits and across tasks."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from datahelpers import grey_image, make_mvtec, save_png
from medad.data.leakage import (cross_task_overlap, find_duplicates, hash_cache_info,
                                pixel_hash)
from medad.data.tasks import Sample, from_mvtec


def test_planted_cross_split_duplicate_is_removed_from_train_and_reported(tmp_path):
    root = make_mvtec(tmp_path / "t")
    test_img = root / "test" / "tumor" / "001.png"
    # same pixels, different name and container details (RGB copy of a grey image)
    a = np.asarray(Image.open(test_img))
    planted = save_png(root / "train" / "good" / "leak.png", np.stack([a, a, a], -1))
    assert Image.open(planted).mode == "RGB"
    t = from_mvtec(root)
    assert planted not in {s.path for s in t.train} and len(t.train) == 4
    assert len(t.removed) == 1
    r = t.removed[0]
    assert r.sample.path == planted
    assert [d.path for d in r.duplicate_of] == [test_img]
    assert "pixel-identical" in r.reason and "test/tumor" in r.reason
    kept = from_mvtec(root, dedupe="none")
    assert planted in {s.path for s in kept.train} and not kept.removed


def test_valid_duplicates_are_removed_too(tmp_path):
    root = make_mvtec(tmp_path / "t", masks=False)
    shutil.copy(root / "train" / "good" / "002.png", root / "test" / "good" / "x.png")
    (root / "valid" / "good").mkdir(parents=True)
    shutil.copy(root / "train" / "good" / "000.png", root / "valid" / "good" / "y.png")
    t = from_mvtec(root)
    assert sorted(r.sample.path.name for r in t.removed) == ["000.png", "002.png"]
    assert "valid/good" in [r for r in t.removed if r.sample.path.name == "000.png"][0].reason


def test_find_duplicates_groups_identical_pixels_only(tmp_path):
    a = save_png(tmp_path / "a.png", grey_image(1))
    b = tmp_path / "b copy.png"
    shutil.copy(a, b)
    c = save_png(tmp_path / "c.png", grey_image(2))
    d = tmp_path / "d.tif"
    Image.fromarray(grey_image(1)).save(d)  # other container, same pixels
    e = save_png(tmp_path / "e.png", grey_image(1)[:, ::-1])  # flipped: different
    samples = [Sample(p, 0, "good") for p in (a, b, c, d, e)]
    groups = find_duplicates(samples)
    assert [[s.path.name for s in g] for g in groups] == [["a.png", "b copy.png", "d.tif"]]


def test_cross_task_overlap(tmp_path):
    t1 = make_mvtec(tmp_path / "one", masks=False)
    t2 = make_mvtec(tmp_path / "two", masks=False)  # same generator: all pixels identical
    save_png(tmp_path / "three" / "x.png", grey_image(12345))
    task1 = from_mvtec(t1)
    other_train = [Sample(p, 0, "good") for p in sorted((t2 / "train" / "good").iterdir())]
    other_train.append(Sample(tmp_path / "three" / "x.png", 0, "good"))
    pairs = cross_task_overlap(task1.test, other_train)
    assert pairs == []  # the generator gives train and test different seeds
    planted = tmp_path / "three" / "leak.png"
    shutil.copy(task1.test[0].path, planted)
    pairs = cross_task_overlap(task1.test, other_train + [Sample(planted, 0, "good")])
    assert len(pairs) == 1 and pairs[0][0] == task1.test[0] and pairs[0][1].path == planted


def test_hash_cache_hits_and_invalidation(tmp_path):
    p = save_png(tmp_path / "a.png", grey_image(1))
    before = hash_cache_info()
    h1 = pixel_hash(p)
    h2 = pixel_hash(Sample(p, 0, "good"))
    after = hash_cache_info()
    assert h1 == h2
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 1
    save_png(p, grey_image(2))  # rewritten: new mtime/content -> new hash
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert pixel_hash(p) != h1


def test_unreadable_file_raises_on_hash(tmp_path):
    from medad.data.io import ImageReadError

    p = tmp_path / "bad.png"
    p.write_text("nope")
    for _ in range(2):  # cached error re-raised
        with pytest.raises(ImageReadError, match="bad.png"):
            pixel_hash(p)
