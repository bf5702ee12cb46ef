"""Helpers for the data-layer tests: tiny files written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def ramp(h=24, w=32, lo=0, hi=255, dtype=np.uint8):
    """A deterministic grey gradient with a bright square (distinct images per arguments)."""
    y, x = np.mgrid[0:h, 0:w]
    a = lo + (hi - lo) * (x + y) / (h + w - 2)
    a[h // 4: h // 2, w // 4: w // 2] = hi
    return np.rint(a).astype(dtype)


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode is not None and img.mode != mode:
        img = img.convert(mode)
    img.save(path)
    return path


def grey_image(seed: int, h=24, w=32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def write_dicom(path: Path, arr: np.ndarray, *, photometric="MONOCHROME2", slope=None,
                intercept=None, center=None, width=None, pixel_data=True, **tags) -> Path:
    """A minimal CT DICOM file; ``tags`` set further attributes (ImagePositionPatient, …)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Test^Phantom"
    if pixel_data:
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    for name, value in tags.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_mvtec(root: Path, *, n_train=4, n_test_good=3, kinds=("tumor",), n_kind=3,
               masks=True, size=(24, 32)) -> Path:
    """Distinct grey PNGs in the MVTec layout (+ masks)."""
    seed = 0
    for i in range(n_train):
        save_png(root / "train" / "good" / f"{i:03d}.png", grey_image(seed := seed + 1, *size))
    for i in range(n_test_good):
        save_png(root / "test" / "good" / f"{i:03d}.png", grey_image(seed := seed + 1, *size))
    for kind in kinds:
        for i in range(n_kind):
            save_png(root / "test" / kind / f"{i:03d}.png", grey_image(seed := seed + 1, *size))
            if masks:
                m = np.zeros(size, np.uint8)
                m[2:6 + i, 3:9] = 255
                save_png(root / "ground_truth" / kind / f"{i:03d}_mask.png", m)
    return root


def make_unsplit(root: Path, *, n_normal=10, kinds: dict[str, int] | None = None, size=(20, 20)) -> Path:
    seed = 100
    for i in range(n_normal):
        save_png(root / "all" / "normal" / f"n{i:02d}.png", grey_image(seed := seed + 1, *size))
    for kind, n in ({"tumor": 4} if kinds is None else kinds).items():
        for i in range(n):
            save_png(root / "all" / kind / f"{kind}{i:02d}.png",
                     grey_image(seed := seed + 1, *size))
    return root
