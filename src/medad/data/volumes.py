"""3-D volumes (MetaImage ``.mha/.mhd``, NIfTI ``.nii/.nii.gz``) as 2-D slices.

Array order
-----------
Volumes are returned as numpy arrays indexed ``(z, y, x)`` — the order SimpleITK's
``GetArrayFromImage`` uses; NIfTI arrays read with nibabel (voxel order ``i, j, k``) are
transposed to ``(k, j, i)`` so both libraries agree.  No re-orientation to a standard
anatomical frame is done: "axial" means the slowest stored axis (``z`` / NIfTI ``k``), which
is axial for the usual axial acquisitions (BraTS: 176 axial slices of 216×160).

Slice rule
----------
* Slices are taken along ``z`` (axis 0): slice ``i`` is ``volume[i]``, shape ``y × x``.
* **Foreground**: a voxel is foreground when it is non-zero (``background=0``; skull-stripped
  MRI such as BraTS has an exact-zero background).  A slice is a **brain / foreground slice**
  when it has more than ``min_foreground = 1000`` foreground pixels.
* **Intensity**: each volume is normalised once (cached) by the 0.5 and 99.5 percentiles of
  its foreground voxels: ``clip((v − p0.5) / (p99.5 − p0.5), 0, 1)``; background voxels are 0.
  The slice tensor is ``3×y×x`` (grey replicated), like :func:`medad.data.io.read_image`.
* **Labels**: a label volume is a mask volume — any label > 0 is anomalous (BraTS truth has
  labels {0, 1, 2}).  A slice is **abnormal** when it has at least ``min_label_pixels = 1``
  labelled pixel.

Decoded volumes are kept in an LRU cache (keyed by path, modification time and size), so
building and reading many slices decodes each file once.  Cached arrays are read-only.

Readers
-------
MetaImage: SimpleITK when installed, else a small built-in reader (local or detached raw
data, optional zlib compression, scalar element types).  NIfTI: nibabel when installed, else
SimpleITK.  Both libraries are imported lazily.
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from .formats import ImageReadError, MissingDependencyError, array_to_tensor, require_module, suffix_of

__all__ = [
    "MIN_FOREGROUND",
    "read_volume",
    "normalised_volume",
    "read_volume_slice",
    "read_label_slice",
    "volume_slice_raw",
    "SliceTable",
    "classify_slices",
    "normalise_volume",
    "clear_volume_cache",
]

MIN_FOREGROUND = 1000
PERCENTILES = (0.5, 99.5)
_CACHE_SIZE = 8


class _LRU:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.data: OrderedDict = OrderedDict()
        self.lock = Lock()
        self.misses = 0

    def get(self, key, make):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = make()
        with self.lock:
            self.misses += 1
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.maxsize:
                self.data.popitem(last=False)
        return value

    def clear(self):
        with self.lock:
            self.data.clear()
            self.misses = 0


_RAW = _LRU(_CACHE_SIZE)
_NORM = _LRU(_CACHE_SIZE)


def clear_volume_cache() -> None:
    """Drop all cached volumes."""
    _RAW.clear()
    _NORM.clear()


def _key(path: Path, *extra) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, *extra)


# --------------------------------------------------------------------------- readers

_MET_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16,
    "MET_INT": np.int32, "MET_UINT": np.uint32, "MET_LONG": np.int64, "MET_ULONG": np.uint64,
    "MET_LONG_LONG": np.int64, "MET_ULONG_LONG": np.uint64,
    "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}


def _read_metaimage_builtin(path: Path) -> np.ndarray:
    """Minimal MetaImage reader: scalar volumes, LOCAL or detached raw, optional zlib."""
    with open(path, "rb") as fh:
        blob = fh.read()
    header: dict[str, str] = {}
    pos = 0
    while True:
        end = blob.find(b"\n", pos)
        if end < 0:
            raise ImageReadError(path, "MetaImage header has no ElementDataFile line")
        line = blob[pos:end].decode("latin-1").strip()
        pos = end + 1
        if "=" in line:
            k, v = line.split("=", 1)
            header[k.strip()] = v.strip()
            if k.strip() == "ElementDataFile":
                break
    try:
        dims = [int(x) for x in header["DimSize"].split()]
        dtype = np.dtype(_MET_TYPES[header["ElementType"]])
    except KeyError as exc:
        raise ImageReadError(path, f"MetaImage header lacks or has unsupported {exc}",
                             "install SimpleITK (pip install SimpleITK)") from exc
    if int(header.get("ElementNumberOfChannels", "1")) != 1:
        raise ImageReadError(path, "multi-channel MetaImage is not supported by the built-in "
                                   "reader", "install SimpleITK (pip install SimpleITK)")
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
    dtype = dtype.newbyteorder(">" if msb.lower() == "true" else "<")
    datafile = header["ElementDataFile"]
    if datafile == "LOCAL":
        data = blob[pos:]
    else:
        try:
            data = (path.parent / datafile).read_bytes()
        except OSError as exc:
            raise ImageReadError(path, f"MetaImage data file '{datafile}' cannot be read "
                                       f"({exc})", "keep the .raw file next to the .mhd") from exc
    if header.get("CompressedData", "False").lower() == "true":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise ImageReadError(path, f"compressed MetaImage data is corrupt ({exc})") from exc
    n = int(np.prod(dims))
    if len(data) < n * dtype.itemsize:
        raise ImageReadError(path, f"MetaImage data is truncated ({len(data)} bytes, "
                                   f"expected {n * dtype.itemsize})")
    arr = np.frombuffer(data, dtype=dtype, count=n).reshape(dims[::-1])
    return arr.astype(dtype.newbyteorder("="))


def _read_sitk(path: Path) -> np.ndarray:
    sitk = require_module("SimpleITK", "reading MetaImage/NIfTI volumes", "SimpleITK")
    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:
        raise ImageReadError(path, f"SimpleITK cannot read the volume ({exc})") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(path, "vector/multi-channel volumes are not supported",
                             "save one channel per file")
    return sitk.GetArrayFromImage(img)


def _read_nifti(path: Path, backend: str) -> np.ndarray:
    if backend in ("auto", "nibabel"):
        try:
            nib = require_module("nibabel", "reading NIfTI volumes", "nibabel")
        except MissingDependencyError:
            if backend == "nibabel":
                raise
            nib = None
        if nib is not None:
            try:
                img = nib.load(str(path))
                arr = np.asanyarray(img.dataobj)
            except Exception as exc:
                raise ImageReadError(path, f"nibabel cannot read the NIfTI file ({exc})") from exc
            arr = np.asarray(arr)
            while arr.ndim > 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if arr.ndim != 3:
                raise ImageReadError(path, f"NIfTI has {arr.ndim} dimensions {arr.shape}; "
                                           "only 3-D volumes are supported",
                                     "save one 3-D volume (one time point/channel) per file")
            return np.ascontiguousarray(arr.transpose(2, 1, 0))
    return _read_sitk(path)


def _decode_volume(path: Path, backend: str) -> np.ndarray:
    suf = suffix_of(path)
    if suf in (".mha", ".mhd"):
        if backend == "builtin":
            arr = _read_metaimage_builtin(path)
        elif backend in ("auto", "sitk"):
            try:
                arr = _read_sitk(path)
            except MissingDependencyError:
                if backend == "sitk":
                    raise
                arr = _read_metaimage_builtin(path)
        else:
            raise ValueError(f"backend {backend!r} cannot read MetaImage")
    elif suf in (".nii", ".nii.gz"):
        arr = _read_nifti(path, "nibabel" if backend == "nibabel" else
                          ("sitk" if backend == "sitk" else "auto"))
    else:
        raise ImageReadError(path, f"suffix '{suf}' is not a volume format",
                             "volumes must be .mha, .mhd, .nii or .nii.gz")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ImageReadError(path, f"volume has shape {arr.shape}; expected 3-D (z, y, x)",
                             "save one 3-D volume per file")
    return arr


def read_volume(path: str | os.PathLike, *, backend: str = "auto") -> np.ndarray:
    """Decode a volume as a read-only numpy array ``(z, y, x)`` in its stored dtype (cached).

    ``backend``: ``"auto"`` (default), ``"sitk"``, ``"nibabel"`` (NIfTI) or ``"builtin"``
    (MetaImage only).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "volume file does not exist", "check the path")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)", "copy the file again")

    def make():
        arr = np.ascontiguousarray(_decode_volume(path, backend))
        arr.flags.writeable = False
        return arr

    return _RAW.get(_key(path, backend), make)


def normalise_volume(vol: np.ndarray, *, background: float = 0,
                     percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Normalise a volume to ``float32`` ``[0, 1]`` by foreground percentiles (module doc)."""
    fg = vol != background
    out = np.zeros(vol.shape, dtype=np.float32)
    if not fg.any():
        return out
    lo, hi = np.percentile(vol[fg].astype(np.float64), percentiles)
    if hi <= lo:
        out[fg] = 1.0 if hi > 0 else 0.0
        return out
    scaled = (vol.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled[~fg] = 0.0
    return scaled


def normalised_volume(path: str | os.PathLike, *, background: float = 0) -> np.ndarray:
    """:func:`read_volume` + :func:`normalise_volume`, cached; read-only ``float32``."""
    path = Path(path)

    def make():
        arr = normalise_volume(read_volume(path), background=background)
        arr.flags.writeable = False
        return arr

    return _NORM.get(_key(path, background), make)


def _check_index(path: Path, vol: np.ndarray, index: int) -> int:
    n = vol.shape[0]
    if not -n <= int(index) < n:
        raise IndexError(f"{path}: slice index {index} out of range (volume has {n} slices "
                         f"along z)")
    return int(index) % n


def read_volume_slice(path: str | os.PathLike, index: int) -> torch.Tensor:
    """Axial slice ``index`` of a volume as ``float32`` ``3×y×x`` in ``[0, 1]``."""
    path = Path(path)
    vol = normalised_volume(path)
    i = _check_index(path, vol, index)
    return array_to_tensor(vol[i])


def read_label_slice(path: str | os.PathLike, index: int) -> torch.Tensor:
    """Axial slice ``index`` of a label volume as mask ``1×y×x`` in ``{0, 1}`` (label > 0)."""
    import torch

    path = Path(path)
    vol = read_volume(path)
    i = _check_index(path, vol, index)
    return torch.from_numpy(np.ascontiguousarray(vol[i] > 0, dtype=np.float32)).unsqueeze(0)


def volume_slice_raw(path: str | os.PathLike, index: int) -> np.ndarray:
    """The stored (un-normalised) values of slice ``index`` (used for duplicate hashing)."""
    path = Path(path)
    vol = read_volume(path)
    return vol[_check_index(path, vol, index)]


@dataclass
class SliceTable:
    """Per-slice statistics of a volume (and its optional label volume)."""

    n_slices: int
    foreground_pixels: np.ndarray
    label_pixels: np.ndarray | None
    min_foreground: int = MIN_FOREGROUND
    min_label_pixels: int = 1
    foreground: list[int] = field(default_factory=list)
    normal: list[int] = field(default_factory=list)
    abnormal: list[int] = field(default_factory=list)


def classify_slices(image_path: str | os.PathLike, label_path: str | os.PathLike | None = None,
                    *, min_foreground: int = MIN_FOREGROUND, min_label_pixels: int = 1,
                    background: float = 0) -> SliceTable:
    """Apply the slice rule: foreground slices (> ``min_foreground`` non-background pixels);
    of those, ``abnormal`` (≥ ``min_label_pixels`` label > 0 pixels) and ``normal`` (no label).

    Slices with label pixels but too little foreground are counted as abnormal too (a
    tumour is never called normal).  Without a label volume every foreground slice is normal.
    """
    image_path = Path(image_path)
    vol = read_volume(image_path)
    fg = (vol != background).reshape(vol.shape[0], -1).sum(axis=1)
    lab = None
    if label_path is not None:
        lvol = read_volume(label_path)
        if lvol.shape != vol.shape:
            raise ImageReadError(label_path, f"label volume shape {lvol.shape} differs from the "
                                             f"image volume {image_path.name} {vol.shape}",
                                 "pair each image volume with its own label volume")
        lab = (lvol > 0).reshape(vol.shape[0], -1).sum(axis=1)
    table = SliceTable(vol.shape[0], fg, lab, min_foreground, min_label_pixels)
    for i in range(vol.shape[0]):
        is_fg = fg[i] > min_foreground
        is_ab = lab is not None and lab[i] >= min_label_pixels
        if is_fg:
            table.foreground.append(i)
        if is_ab:
            table.abnormal.append(i)
        elif is_fg:
            table.normal.append(i)
    return table
