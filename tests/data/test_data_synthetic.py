"""medad.data.synthetic: anomalies pasted into normal images for label-free model selection."""

from __future__ import annotations

import pytest
import torch

from medad.data.synthetic import KINDS, pasted_anomalies


def _normals(count: int = 6, size: int = 48) -> torch.Tensor:
    """Dark background with a bright textured disc (the foreground), different per image."""
    generator = torch.Generator().manual_seed(0)
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((rows - size / 2) ** 2 + (columns - size / 2) ** 2 < (size / 3) ** 2).float()
    texture = 0.3 + 0.5 * torch.rand(count, 3, size, size, generator=generator)
    return texture * disc


def test_each_image_gets_one_anomaly_inside_its_mask_and_nothing_outside():
    normals = _normals()
    anomalous, masks, kinds = pasted_anomalies(normals, seed=3)
    assert anomalous.shape == normals.shape and masks.shape == (6, 1, 48, 48)
    assert kinds == [KINDS[i % 2] for i in range(6)]
    inside = masks.bool().expand_as(normals)
    assert torch.equal(anomalous[~inside], normals[~inside])
    for image in range(6):
        assert 10 < masks[image].sum() < 0.2 * 48 * 48
        changed = (anomalous[image] - normals[image]).abs()[inside[image]]
        assert changed.mean() > 0.05, f"anomaly {kinds[image]} of image {image} is not visible"
    assert anomalous.min() >= 0 and anomalous.max() <= 1


def test_anomalies_lie_in_the_foreground_and_are_reproducible():
    normals = _normals()
    anomalous, masks, _ = pasted_anomalies(normals, seed=1)
    foreground = normals.mean(dim=1, keepdim=True) > 0.1
    assert (masks.bool() & foreground).sum() > 0.8 * masks.sum()
    again, masks_again, _ = pasted_anomalies(normals, seed=1)
    other, _, _ = pasted_anomalies(normals, seed=2)
    assert torch.equal(masks, masks_again) and torch.equal(anomalous, again)
    assert not torch.equal(again, other)


def test_a_patch_comes_from_another_image():
    normals = torch.stack([torch.full((1, 32, 32), 0.3), torch.full((1, 32, 32), 0.9)])
    anomalous, masks, kinds = pasted_anomalies(normals, seed=0)
    assert kinds[0] == "patch"
    assert torch.allclose(anomalous[0][masks[0].bool()], torch.tensor(0.9))


def test_needs_a_batch_of_two():
    with pytest.raises(ValueError, match="at least 2 images"):
        pasted_anomalies(torch.rand(1, 3, 16, 16))
