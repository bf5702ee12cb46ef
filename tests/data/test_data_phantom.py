"""medad.data.phantom: deterministic phantom images and MVTec-layout tasks."""

from __future__ import annotations

import numpy as np
import pytest

from medad.data.leakage import find_duplicates
from medad.data.phantom import STYLES, make_phantom, make_phantom_task
from medad.data.tasks import load_sample_image, load_sample_mask


@pytest.mark.parametrize("style", STYLES)
def test_phantom_is_deterministic_and_varied(style):
    a, ma = make_phantom(3, size=64, style=style, index=2)
    b, mb = make_phantom(3, size=64, style=style, index=2)
    assert a.dtype == np.uint8 and a.shape == (64, 64)
    assert np.array_equal(a, b) and not ma.any()
    c, _ = make_phantom(3, size=64, style=style, index=3)
    d, _ = make_phantom(4, size=64, style=style, index=2)
    assert np.abs(a.astype(int) - c).mean() > 2 and np.abs(a.astype(int) - d).mean() > 2
    assert a.std() > 20 and (a == 0).mean() > 0.02  # anatomy on a dark background


@pytest.mark.parametrize("style", STYLES)
def test_lesion_is_where_the_mask_is(style):
    for i in range(4):
        clean, _ = make_phantom(0, size=96, style=style, index=i, split="test_abnormal")
        sick, mask = make_phantom(0, size=96, style=style, index=i, split="test_abnormal",
                                  lesion=True)
        assert 15 < mask.sum() < 0.2 * mask.size
        diff = np.abs(sick.astype(float) - clean)
        assert diff[mask].mean() > 25, "lesion must be visible"
        assert diff[mask].mean() > 4 * diff[~mask].mean()


def test_polarity():
    clean, _ = make_phantom(1, size=64, index=0, split="x")
    bright, m = make_phantom(1, size=64, index=0, split="x", lesion=True, polarity="bright")
    dark, m2 = make_phantom(1, size=64, index=0, split="x", lesion=True, polarity="dark")
    assert (bright.astype(int) - clean)[m].mean() > 20
    assert (dark.astype(int) - clean)[m2].mean() < -20


def test_styles_differ():
    means = {s: np.mean([make_phantom(0, size=64, style=s, index=i)[0] for i in range(4)], 0)
             for s in STYLES}
    for s in STYLES:
        for t in STYLES:
            if s < t:
                assert np.abs(means[s] - means[t]).mean() > 10


def test_phantom_task_layout_and_reuse(tmp_path):
    root = tmp_path / "ph"
    t = make_phantom_task(root, name="ph_head", n_train=6, n_test_normal=3,
                          n_test_abnormal=4, size=48, seed=5, style="head")
    assert t.name == "ph_head" and len(t.train) == 6
    assert t.counts()["test"] == {"normal": 3, "abnormal": 4, "kinds": {"good": 3, "lesion": 4}}
    assert (root / "ground_truth" / "lesion" / "000_mask.png").is_file()
    ab = [s for s in t.test if s.label == 1]
    x, m = load_sample_image(ab[0]), load_sample_mask(ab[0])
    assert x.shape == (3, 48, 48) and m.shape == (1, 48, 48) and m.sum() > 0
    assert not t.removed and find_duplicates(t.train + t.test) == []
    mtime = (root / "train" / "good" / "000.png").stat().st_mtime_ns
    again = make_phantom_task(root, name="ph_head", n_train=6, n_test_normal=3,
                              n_test_abnormal=4, size=48, seed=5, style="head")
    assert (root / "train" / "good" / "000.png").stat().st_mtime_ns == mtime  # reused
    assert [s.path for s in again.test] == [s.path for s in t.test]
    smaller = make_phantom_task(root, n_train=2, n_test_normal=1, n_test_abnormal=1, size=48,
                                seed=5)
    assert len(smaller.train) == 2 and len(smaller.test) == 2  # no stale files


def test_phantom_task_is_bit_identical_across_folders(tmp_path):
    a = make_phantom_task(tmp_path / "a", n_train=3, n_test_normal=2, n_test_abnormal=2,
                          size=32, seed=9, style="chest")
    b = make_phantom_task(tmp_path / "b", n_train=3, n_test_normal=2, n_test_abnormal=2,
                          size=32, seed=9, style="chest")
    for sa, sb in zip(a.train + a.test, b.train + b.test, strict=True):
        assert sa.path.read_bytes() == sb.path.read_bytes()


def test_phantom_task_refuses_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        make_phantom_task(tmp_path / "x", n_train=2)
    with pytest.raises(ValueError, match="style"):
        make_phantom_task(tmp_path / "y", style="knee")
