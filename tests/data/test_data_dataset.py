"""medad.data.dataset: resized images, masks, labels, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datahelpers import grey_image, make_mvtec, save_png
from medad.data.dataset import SampleDataset
from medad.data.tasks import Sample, from_mvtec


def test_items_have_the_contract_shapes_and_values(tmp_path):
    task = from_mvtec(make_mvtec(tmp_path / "t", size=(30, 50)))
    ds = SampleDataset(task.test, 16)
    assert len(ds) == 6 and ds.labels == [0, 0, 0, 1, 1, 1]
    item = ds[0]
    assert set(item) == {"image", "mask", "label", "index"}
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert item["mask"].shape == (1, 16, 16) and item["mask"].sum() == 0 and item["label"] == 0
    ab = ds[4]
    assert ab["label"] == 1 and ab["index"] == 4
    assert set(ab["mask"].unique().tolist()) == {0.0, 1.0} and ab["mask"].sum() > 0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].tolist() == [0, 0, 0, 1]


def test_resize_is_antialiased_bilinear(tmp_path):
    a = np.zeros((64, 64), np.uint8)
    a[:, ::2] = 255  # fine stripes -> antialiased downsampling gives ~0.5 grey
    p = save_png(tmp_path / "s.png", a)
    img = SampleDataset([Sample(p, 0, "good")], 8)[0]["image"]
    assert torch.allclose(img, torch.full_like(img, 0.5), atol=0.02)


def test_cache_returns_equal_copies(tmp_path):
    p = save_png(tmp_path / "a.png", grey_image(1))
    cache: dict = {}
    ds = SampleDataset([Sample(p, 0, "good")], 12, cache=cache)
    x = ds[0]["image"]
    assert len(cache) == 1
    x.zero_()  # callers may modify their copy
    p.unlink()  # served from memory now
    y = ds[0]["image"]
    assert y.abs().sum() > 0
    ds2 = SampleDataset([Sample(p, 0, "good")], 12, cache=cache)  # shared cache
    assert torch.equal(ds2[0]["image"], y)


def test_mask_size_mismatch_is_an_error(tmp_path):
    p = save_png(tmp_path / "a.png", grey_image(1, 24, 32))
    m = save_png(tmp_path / "m.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="mask size"):
        SampleDataset([Sample(p, 1, "x", m)], 8)[0]
