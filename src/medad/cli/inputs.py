"""Images and volumes named on the command line, checked and loaded at the model's input size.

An input is a file or a folder (searched recursively, sorted; hidden entries ignored).  Files are 2-D
images (PNG, JPEG, TIFF, BMP, single DICOM files), volumes (NIfTI ``.nii/.nii.gz``, MetaImage
``.mha/.mhd``) or, inside a folder, DICOM series (see :mod:`medad.data.dicom_series`).  A volume is
scored slice by slice on its slices with body content (more than ``MIN_FOREGROUND`` pixels above the
background).

Unsupported or unreadable files, images with NaN/Inf values and volumes without body content stop the
command, naming the file, unless ``--skip-unreadable`` (then each is warned about and listed); images
that are too small or constant (:mod:`medad.data.quality`) also need ``--allow-degenerate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medad import console
from medad.cli.errors import CliError
from medad.data.dataset import resize_image
from medad.data.dicom_series import DicomSeries, VolumeGeometry, group_series, read_series
from medad.data.io import ImageReadError, array_to_tensor, decode_image, file_kind, to_unit_float
from medad.data.quality import image_problems
from medad.data.volumes import MIN_FOREGROUND, classify_slices, normalised_volume, read_volume

METAIMAGE_DATA_SUFFIXES = (".raw", ".zraw")


@dataclass
class ImageInput:
    path: Path
    image: torch.Tensor  # 3×S×S at the model's size


@dataclass
class VolumeInput:
    """A volume (file or DICOM series) with its body-content slices at the model's size."""

    source: Path
    name: str
    volume: np.ndarray  # (z, y, x) float32 in [0, 1]
    indices: list[int]
    slices: torch.Tensor  # len(indices)×3×S×S
    geometry: VolumeGeometry

    def slice_name(self, index: int) -> str:
        return f"{self.source}#slice{index}"


@dataclass
class Inputs:
    images: list[ImageInput] = field(default_factory=list)
    volumes: list[VolumeInput] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def tensor(self) -> torch.Tensor:
        """Every image, then every volume's slices, as one N×3×S×S tensor."""
        return torch.cat([image.image[None] for image in self.images] + [volume.slices for volume in self.volumes])


@dataclass
class _Found:
    images: list[Path] = field(default_factory=list)
    volumes: list[Path] = field(default_factory=list)
    series: list[DicomSeries] = field(default_factory=list)
    unsupported: list[Path] = field(default_factory=list)


def _scan(items: list[str], flag: str) -> _Found:
    found = _Found()
    for item in items:
        path = Path(item)
        if path.is_dir():
            for folder, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                _sort_files(Path(folder), sorted(f for f in filenames if not f.startswith(".")), found, folder_scan=True)
        elif path.is_file():
            _sort_files(path.parent, [path.name], found, folder_scan=False)
        else:
            raise CliError(f"{flag} {item}: no such file or folder")
    return found


def _sort_files(folder: Path, names: list[str], found: _Found, folder_scan: bool) -> None:
    dicoms = []
    for name in names:
        path = folder / name
        kind = file_kind(path)
        if kind == "image":
            found.images.append(path)
        elif kind == "dicom":
            dicoms.append(path)
        elif kind == "volume":
            found.volumes.append(path)
        elif not (path.suffix.lower() in METAIMAGE_DATA_SUFFIXES and path.with_suffix(".mhd").is_file()):
            found.unsupported.append(path)
    if folder_scan and len(dicoms) > 1:
        series, singles = group_series(dicoms)
        found.series.extend(series)
        found.images.extend(singles)
    else:
        found.images.extend(dicoms)


class _Loader:
    """Loads inputs, applying the skip / refuse rules of the module doc."""

    def __init__(self, image_size: int, flag: str, skip_unreadable: bool, allow_degenerate: bool):
        self.size = image_size
        self.flag = flag
        self.skip = skip_unreadable
        self.allow_degenerate = allow_degenerate
        self.skipped: list[tuple[str, str]] = []

    def refuse(self, path: Path, problem: str, fix: str = "fix or remove the file") -> None:
        """Skip with a warning under --skip-unreadable, else stop with a one-line error."""
        if self.skip:
            console.warn(f"skipped {path}: {problem}")
            self.skipped.append((str(path), problem))
            return
        raise CliError(f"{path}: {problem}; {fix}, or pass --skip-unreadable to skip such files with a warning")

    def image(self, path: Path) -> ImageInput | None:
        try:
            decoded = decode_image(path)
        except ImageReadError as error:
            self.refuse(path, error.problem)
            return None
        problems = image_problems(decoded.array)
        if problems.unusable:
            self.refuse(path, "; ".join(problems.unusable))
            return None
        if problems.degenerate:
            text = "; ".join(problems.degenerate)
            if not self.allow_degenerate:
                self.refuse(path, f"{text}, so its score would mean nothing",
                            "check the file, or pass --allow-degenerate to score it anyway")
                return None
            console.warn(f"{path}: {text}; scored because of --allow-degenerate")
        tensor = array_to_tensor(to_unit_float(decoded))
        return ImageInput(path, resize_image(tensor, self.size))

    def volume_file(self, path: Path) -> VolumeInput | None:
        try:
            raw = read_volume(path)
            if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
                self.refuse(path, "the volume holds NaN or infinite values")
                return None
            volume = normalised_volume(path)
            indices = classify_slices(path).foreground
            geometry = _file_geometry(path)
        except ImageReadError as error:
            self.refuse(path, error.problem)
            return None
        return self._volume(path, path.name, volume, indices, geometry)

    def series(self, series: DicomSeries) -> VolumeInput | None:
        try:
            volume = read_series(series)
        except ImageReadError as error:
            self.refuse(series.folder, f"DICOM series {series.uid}: {error.problem}")
            return None
        content = (volume > 0).reshape(len(volume), -1).sum(axis=1)
        indices = [int(i) for i in np.flatnonzero(content > MIN_FOREGROUND)]
        return self._volume(series.folder, series.name, volume, indices, series.geometry)

    def _volume(self, source: Path, name: str, volume: np.ndarray, indices: list[int],
                geometry: VolumeGeometry) -> VolumeInput | None:
        if not indices:
            self.refuse(source, f"no slice of the volume has body content (more than {MIN_FOREGROUND} pixels above "
                                "the background)", "check the volume")
            return None
        slices = torch.stack([resize_image(array_to_tensor(volume[i]), self.size) for i in indices])
        return VolumeInput(source, name, volume, indices, slices, geometry)


def _file_geometry(path: Path) -> VolumeGeometry:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(path, f"SimpleITK cannot read the volume's geometry ({error})") from error
    return VolumeGeometry(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())


def load_inputs(items: list[str], image_size: int, *, flag: str, skip_unreadable: bool = False,
                allow_degenerate: bool = False) -> Inputs:
    """The images and volumes named by ``items`` (module doc); refuses to return nothing."""
    found = _scan(items, flag)
    loader = _Loader(image_size, flag, skip_unreadable, allow_degenerate)
    for path in found.unsupported:
        loader.refuse(path, f"'{path.suffix or '(no suffix)'}' is not an image or volume format medad reads",
                      "remove or convert the file")
    inputs = Inputs()
    inputs.images = [image for image in map(loader.image, found.images) if image is not None]
    inputs.volumes = [v for v in [*map(loader.volume_file, found.volumes), *map(loader.series, found.series)]
                      if v is not None]
    inputs.skipped = loader.skipped
    if not inputs.images and not inputs.volumes:
        raise CliError(f"{flag} {' '.join(items)}: no image or volume could be read"
                       + (f" ({len(loader.skipped)} skipped)" if loader.skipped else ""))
    return inputs


def drop_duplicate_supports(support: Inputs, flag: str) -> Inputs:
    """``support`` without duplicate and near-duplicate images (:mod:`medad.engine.support_checks`), each
    dropped one warned about and listed among the skipped files."""
    from medad.engine.support_checks import distinct_supports

    kept, dropped = distinct_supports(support.tensor(), [str(image.path) for image in support.images])
    for item in dropped:
        console.warn(f"{flag}: {item.describe()}; dropped (a repeated support would collapse the supports' "
                     f"statistics), K is now {len(kept)}")
    return Inputs([support.images[i] for i in kept], support.volumes,
                  support.skipped + [(item.name, f"support {item.describe()}") for item in dropped])
