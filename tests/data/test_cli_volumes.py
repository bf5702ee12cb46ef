"""Volumes from the CLI: NIfTI, MetaImage and DICOM series scored slice by slice, with aligned anomaly maps."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from datahelpers import write_dicom
from medad.cli.main import main

nib = pytest.importorskip("nibabel")


def _head(shape_yx: tuple[int, int], inside: float, outside: float) -> np.ndarray:
    """An ellipse filling most of a y×x slice."""
    y, x = np.ogrid[:shape_yx[0], :shape_yx[1]]
    cy, cx = (shape_yx[0] - 1) / 2, (shape_yx[1] - 1) / 2
    mask = ((y - cy) / (0.42 * shape_yx[0])) ** 2 + ((x - cx) / (0.42 * shape_yx[1])) ** 2 <= 1
    return np.where(mask, inside, outside)


def _volume_zyx(n_slices: int = 6, shape_yx=(64, 48)) -> np.ndarray:
    """Body content on the inner slices only; the first and last slices are empty (zero)."""
    rng = np.random.default_rng(0)
    volume = np.zeros((n_slices, *shape_yx), np.float32)
    for z in range(1, n_slices - 1):
        volume[z] = _head(shape_yx, 1.0, 0.0) * (300 + 100 * rng.random(shape_yx))
    return volume


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_scores_a_nifti_volume_and_writes_an_aligned_anomaly_map(rd4ad_checkpoint, tmp_path):
    """Defect: a NIfTI volume could not be scored from the CLI at all."""
    affine = np.array([[0, -1.2, 0, 30], [0.9, 0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]], float)
    volume = _volume_zyx()
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), affine), path)
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(path), "--out", str(tmp_path / "out"),
                 "--threshold", "0.05", "--quiet"]) == 0
    out = tmp_path / "out"
    slices = _rows(out / "scores.csv")
    assert [row["path"] for row in slices] == [f"{path}#slice{z}" for z in (1, 2, 3, 4)]
    (row,) = _rows(out / "volume_scores.csv")
    assert (row["slices"], row["scored_slices"]) == ("6", "4")
    assert float(row["score"]) == max(float(s["score"]) for s in slices)
    assert row["abnormal"] == str(float(row["score"]) > 0.05)
    anomaly = nib.load(out / row["anomaly_map"])
    assert anomaly.shape == (48, 64, 6) and np.allclose(anomaly.affine, affine, atol=1e-4)
    data = np.asarray(anomaly.dataobj)
    assert not data[..., 0].any() and not data[..., 5].any() and all(data[..., z].any() for z in (1, 2, 3, 4))
    assert (out / "heatmaps" / f"head_slice{row['most_anomalous_slice']}.png").is_file()
    recorded = json.loads((out / "scores.json").read_text())
    assert recorded["volumes"][0]["most_anomalous_slice"] == int(row["most_anomalous_slice"])


def _dicom_series(folder, volume_hu: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(-20.0, -30.0, 10.0)) -> str:
    from pydicom.uid import generate_uid

    uid = generate_uid()
    order = [3, 0, 4, 1, 2]  # file names not in slice order
    for name, z in enumerate(order):
        position = [origin[0], origin[1], origin[2] + z * spacing[2]]
        write_dicom(folder / f"IM{name:04d}", volume_hu[z].astype(np.int16), center=40, width=80,
                    SeriesInstanceUID=uid, ImagePositionPatient=position, ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                    PixelSpacing=[spacing[1], spacing[0]], InstanceNumber=name + 1)
    return uid


def test_fewshot_score_reads_metaimage_volumes_and_dicom_series(fewshot_checkpoint, phantom_head, tmp_path):
    """Defect: MetaImage volumes and DICOM series could not be scored from the CLI at all."""
    queries = tmp_path / "queries"
    queries.mkdir()
    mha = sitk.GetImageFromArray(_volume_zyx())
    mha.SetSpacing((0.9, 0.9, 4.0))
    mha.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(mha, str(queries / "brain.mha"))
    hu = np.stack([_head((64, 48), 40.0 if z else -1000.0, -1000.0) for z in range(5)])  # slice 0: air only
    _dicom_series(queries / "ct", hu)
    write_dicom(queries / "ct" / "xray.dcm", _head((64, 48), 600, 0).astype(np.uint16))  # a lone 2-D image
    supports = sorted((phantom_head.root / "train" / "good").iterdir())[:4]
    assert main(["fewshot", "score", "--checkpoint", str(fewshot_checkpoint), "--support", *map(str, supports),
                 "--query", str(queries), "--out", str(tmp_path / "out"), "--heatmaps", str(tmp_path / "maps"),
                 "--support-cache", str(tmp_path / "cache"), "--quiet"]) == 0
    out = tmp_path / "out"
    volumes = {row["path"]: row for row in _rows(out / "volume_scores.csv")}
    assert set(volumes) == {str(queries / "brain.mha"), str(queries / "ct")}
    assert volumes[str(queries / "ct")]["scored_slices"] == "4"
    series_slices = [row["path"] for row in _rows(out / "scores.csv") if row["path"].startswith(f"{queries / 'ct'}#")]
    assert series_slices == [f"{queries / 'ct'}#slice{z}" for z in (1, 2, 3, 4)]  # sorted by position
    assert any(row["path"].endswith("xray.dcm") for row in _rows(out / "scores.csv"))
    series_map = sitk.ReadImage(str(out / volumes[str(queries / "ct")]["anomaly_map"]))
    assert series_map.GetSize() == (48, 64, 5)
    assert np.allclose(series_map.GetOrigin(), (-20.0, -30.0, 10.0), atol=1e-4)
    assert np.allclose(series_map.GetSpacing(), (0.8, 0.7, 2.5), atol=1e-4)
    mha_map = sitk.ReadImage(str(out / volumes[str(queries / "brain.mha")]["anomaly_map"]))
    assert np.allclose(mha_map.GetSpacing(), (0.9, 0.9, 4.0)) and np.allclose(mha_map.GetOrigin(), (1.0, 2.0, 3.0))
    assert len(list((tmp_path / "maps").glob("*.png"))) == 3  # the x-ray and one slice per volume
