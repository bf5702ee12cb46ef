"""medad.data.volumes: MetaImage and NIfTI volumes written here → slices and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medad.data import volumes
from medad.data.io import ImageReadError, read_image
from medad.data.tasks import from_volume_slices, load_sample_image, load_sample_mask

Z, Y, X = 12, 40, 40  # 1600 pixels per slice


def synthetic_volume():
    """Foreground (> 1000 px) in slices 2..9; small foreground (200 px) in 0, 1, 10, 11;
    tumour labels in slices 5, 6 (label 1 and 2) and one voxel in slice 9."""
    rng = np.random.default_rng(0)
    vol = np.zeros((Z, Y, X), np.int16)
    yy, xx = np.mgrid[0:Y, 0:X]
    disk = (yy - 20) ** 2 + (xx - 20) ** 2 < 19 ** 2  # ~1130 px
    small = (yy < 10) & (xx < 20)  # 200 px
    for z in range(Z):
        m = disk if 2 <= z <= 9 else small
        vol[z][m] = rng.integers(100, 1000, m.sum())
    lab = np.zeros_like(vol)
    lab[5, 15:20, 15:22] = 1
    lab[6, 18:24, 18:20] = 2
    lab[9, 20, 20] = 1
    return vol, lab


def write_mha(path, arr, compress=True):
    sitk = pytest.importorskip("SimpleITK")
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), compress)
    return path


def write_nifti(path, arr):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), np.eye(4)), str(path))
    return path


def test_metaimage_sitk_and_builtin_readers_agree(tmp_path):
    vol, _ = synthetic_volume()
    p = write_mha(tmp_path / "v.mha", vol, compress=True)
    a = volumes.read_volume(p, backend="sitk")
    b = volumes.read_volume(p, backend="builtin")
    assert a.shape == (Z, Y, X) and a.dtype == np.int16
    np.testing.assert_array_equal(a, vol)
    np.testing.assert_array_equal(b, vol)
    assert not a.flags.writeable  # cached arrays are read-only
    # detached header + raw data (.mhd + .raw), uncompressed
    q = write_mha(tmp_path / "v.mhd", vol, compress=False)
    np.testing.assert_array_equal(volumes.read_volume(q, backend="builtin"), vol)


def test_nifti_is_returned_in_zyx_order(tmp_path):
    vol, _ = synthetic_volume()
    p = write_nifti(tmp_path / "v ü.nii.gz", vol)
    a = volumes.read_volume(p)
    np.testing.assert_array_equal(a, vol)
    np.testing.assert_array_equal(volumes.read_volume(p, backend="sitk"), vol)


def test_slice_rule_and_labels(tmp_path):
    vol, lab = synthetic_volume()
    img = write_mha(tmp_path / "img.mha", vol)
    seg = write_nifti(tmp_path / "seg.nii.gz", lab)  # formats may be mixed
    t = volumes.classify_slices(img, seg)
    assert t.foreground == list(range(2, 10))
    assert t.abnormal == [5, 6, 9]
    assert t.normal == [2, 3, 4, 7, 8]
    assert t.label_pixels[5] == 35 and t.label_pixels[9] == 1


def test_normalisation_by_foreground_percentiles(tmp_path):
    vol, _ = synthetic_volume()
    img = write_mha(tmp_path / "img.mha", vol)
    fg = vol[vol != 0].astype(float)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    s = volumes.read_volume_slice(img, 4)
    assert s.shape == (3, Y, X) and s.dtype == torch.float32
    assert torch.equal(s[0], s[1]) and torch.equal(s[0], s[2])
    expect = np.clip((vol[4] - lo) / (hi - lo), 0, 1)
    expect[vol[4] == 0] = 0
    np.testing.assert_allclose(s[0].numpy(), expect, atol=1e-5)
    assert s[0][vol[4] == 0].abs().sum() == 0 and 0 < float(s.max()) <= 1


def test_label_slice_is_binary_mask(tmp_path):
    _, lab = synthetic_volume()
    seg = write_mha(tmp_path / "seg.mha", lab)
    m = volumes.read_label_slice(seg, 6)
    assert m.shape == (1, Y, X) and set(m.unique().tolist()) == {0.0, 1.0}
    assert int(m.sum()) == 12  # label 2 counts as anomalous
    assert int(volumes.read_label_slice(seg, 0).sum()) == 0
    with pytest.raises(IndexError, match="out of range"):
        volumes.read_label_slice(seg, Z)


def test_volumes_are_decoded_once(tmp_path):
    vol, _ = synthetic_volume()
    img = write_mha(tmp_path / "img.mha", vol)
    volumes.clear_volume_cache()
    for i in range(Z):
        volumes.read_volume_slice(img, i)
    volumes.classify_slices(img)
    assert volumes._RAW.misses == 1 and volumes._NORM.misses == 1


def test_volume_slice_task_block_and_alternate(tmp_path):
    vol, lab = synthetic_volume()
    img, seg = write_mha(tmp_path / "img.mha", vol), write_mha(tmp_path / "seg.mha", lab)
    task = from_volume_slices(img, seg)
    assert [s.slice_index for s in task.train] == [2, 3]  # seed 0: lowest block of 5 // 2
    test_n = sorted(s.slice_index for s in task.test if s.label == 0)
    assert test_n == [4, 7, 8]
    ab = [s for s in task.test if s.label == 1]
    assert [s.slice_index for s in ab] == [5, 6, 9]
    assert all(s.mask_path == seg for s in task.test)
    x = load_sample_image(ab[0])
    m = load_sample_mask(ab[0])
    assert x.shape == (3, Y, X) and m.shape == (1, Y, X) and int(m.sum()) == 35
    alt = from_volume_slices(img, seg, slice_split="alternate")
    assert [s.slice_index for s in alt.train] == [2, 4]
    assert sorted(s.slice_index for s in alt.test if s.label == 0) == [3, 7, 8]
    # seeds give deterministic (and here different) blocks
    starts = {from_volume_slices(img, seg, seed=s).train[0].slice_index for s in range(1, 8)}
    assert starts <= {2, 3, 4, 7} and len(starts) > 1
    again = from_volume_slices(img, seg, seed=5)
    assert again.train == from_volume_slices(img, seg, seed=5).train


def test_read_image_on_volumes(tmp_path):
    vol, _ = synthetic_volume()
    p = write_mha(tmp_path / "img.mha", vol)
    with pytest.raises(ImageReadError, match="3-D volume with 12 slices"):
        read_image(p)
    one = write_mha(tmp_path / "one.mha", vol[4:5])
    t = read_image(one)
    assert t.shape == (3, Y, X) and float(t.max()) == 1.0


def test_bad_volumes(tmp_path):
    vol, lab = synthetic_volume()
    img = write_mha(tmp_path / "img.mha", vol)
    other = write_mha(tmp_path / "seg.mha", lab[:, :20])
    with pytest.raises(ImageReadError, match="label volume shape"):
        volumes.classify_slices(img, other)
    empty = tmp_path / "e.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        volumes.read_volume(empty)
    broken = tmp_path / "b.mha"
    broken.write_bytes(img.read_bytes()[:400])
    with pytest.raises(ImageReadError):
        volumes.read_volume(broken, backend="builtin")
    with pytest.raises(ImageReadError):
        volumes.read_volume(broken, backend="sitk")


def test_fallbacks_when_a_volume_library_is_missing(tmp_path, monkeypatch):
    import sys

    vol, _ = synthetic_volume()
    mha = write_mha(tmp_path / "v.mha", vol)
    nii = write_nifti(tmp_path / "v.nii.gz", vol)
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    volumes.clear_volume_cache()
    np.testing.assert_array_equal(volumes.read_volume(mha), vol)  # built-in MetaImage reader
    with pytest.raises(volumes.MissingDependencyError, match="pip install SimpleITK"):
        volumes.read_volume(mha, backend="sitk")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(volumes.MissingDependencyError, match="pip install"):
        volumes.read_volume(nii)
    monkeypatch.delitem(sys.modules, "SimpleITK")
    volumes.clear_volume_cache()
    np.testing.assert_array_equal(volumes.read_volume(nii), vol)  # NIfTI via SimpleITK
