"""DICOM series: a folder's DICOM slices of one 3-D acquisition, read as a volume.

Grouping rule: DICOM files in one folder that share a ``SeriesInstanceUID`` and all carry an
``ImagePositionPatient`` and ``ImageOrientationPatient`` form a series when there are at least two of
them; every other DICOM file is a 2-D image.  Slices are ordered along the slice normal (the cross
product of the orientation's row and column cosines) by their position.

Pixels: each slice is decoded by the 2-D DICOM rules of :mod:`medad.data.io` (modality rescale, the
header's VOI window, ``MONOCHROME1`` inverted), so a series and its slices exported one by one read
alike.  The geometry (origin, spacing, direction in DICOM's LPS frame) is kept for writing
anomaly-map volumes aligned with the series.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .formats import ImageReadError, require_module
from .io import decode_image, to_unit_float

__all__ = ["DicomSeries", "VolumeGeometry", "group_series", "read_series"]


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid in patient space, in SimpleITK's conventions (x, y, z order; direction row-major 3×3)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]


@dataclass
class DicomSeries:
    """The slices of one series, sorted along the slice normal, and its geometry."""

    folder: Path
    uid: str
    files: list[Path]
    geometry: VolumeGeometry

    @property
    def name(self) -> str:
        return f"{self.folder.name}_series"


def _headers(files: list[Path]) -> dict[Path, object]:
    pydicom = require_module("pydicom", "reading DICOM series")
    tags = ["SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
            "SliceThickness"]
    headers = {}
    for path in files:
        try:
            headers[path] = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=tags, force=True)
        except Exception:  # noqa: BLE001 - an unparsable header is a 2-D reading problem, reported there
            continue
    return headers


def group_series(files: list[Path]) -> tuple[list[DicomSeries], list[Path]]:
    """Split the DICOM files of ONE folder into series (module rule) and single images, both sorted."""
    headers = _headers(files)
    groups: dict[str, list[Path]] = defaultdict(list)
    for path, header in headers.items():
        if all(getattr(header, tag, None) is not None
               for tag in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient")):
            groups[str(header.SeriesInstanceUID)].append(path)
    series = []
    in_series: set[Path] = set()
    for uid, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        series.append(_sorted_series(uid, members, headers))
        in_series.update(members)
    return series, sorted(p for p in files if p not in in_series)


def _sorted_series(uid: str, members: list[Path], headers: dict[Path, object]) -> DicomSeries:
    orientation = np.array([float(v) for v in headers[members[0]].ImageOrientationPatient])
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    positions = {p: np.array([float(v) for v in headers[p].ImagePositionPatient]) for p in members}
    ordered = sorted(members, key=lambda p: (float(positions[p] @ normal), p.name))
    distances = np.diff([positions[p] @ normal for p in ordered])
    first = headers[ordered[0]]
    spacing_yx = [float(v) for v in getattr(first, "PixelSpacing", None) or (1.0, 1.0)]
    slice_spacing = float(np.median(distances)) if len(distances) else float(getattr(first, "SliceThickness", 1) or 1)
    if slice_spacing <= 0:
        raise ImageReadError(ordered[0], f"series {uid} has slices at the same position",
                             "keep one copy of each slice in the folder")
    direction = np.stack([row, column, normal], axis=1)  # columns: the x, y, z axes in patient space
    geometry = VolumeGeometry(tuple(float(v) for v in positions[ordered[0]]),
                              (spacing_yx[1], spacing_yx[0], slice_spacing),
                              tuple(float(v) for v in direction.ravel()))
    return DicomSeries(ordered[0].parent, uid, ordered, geometry)


def read_series(series: DicomSeries) -> np.ndarray:
    """The series as ``float32`` ``(z, y, x)`` in ``[0, 1]`` (each slice by the 2-D DICOM rules)."""
    slices = [to_unit_float(decode_image(path)) for path in series.files]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1 or slices[0].ndim != 2:
        raise ImageReadError(series.folder, f"series {series.uid} mixes slice shapes {sorted(shapes)} or holds "
                                            "colour slices", "keep one grey-scale series per folder")
    return np.stack(slices)
