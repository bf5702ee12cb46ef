"""Read one image file into the project's tensor convention.

Convention (see ``docs/ARCHITECTURE.md``)
-----------------------------------------
* :func:`read_image` returns a ``torch.float32`` tensor ``3×H×W`` with values in ``[0, 1]``;
  grey images are replicated to three channels (ImageNet teachers expect RGB).  No ImageNet
  normalisation is applied here.
* :func:`read_mask` returns a ``torch.float32`` tensor ``1×H×W`` with values in ``{0, 1}``.

Reader choice
-------------
The file suffix decides the reader (case-insensitive):

* ``.png .jpg .jpeg .bmp .tif .tiff`` (and ``.gif .webp``) → Pillow.  Pillow identifies the
  actual encoding from the file content, so a PNG stored under ``.jpg`` still reads.
* ``.dcm .dicom`` → pydicom.  Files **without a suffix** are sniffed: ``DICM`` at byte 128
  (the DICOM preamble) → DICOM; anything else is an error.
* ``.mha .mhd .nii .nii.gz`` → :mod:`medad.data.volumes`.  :func:`read_image` only accepts a
  volume with a single slice; use :func:`medad.data.volumes.read_volume_slice` for 3-D data.

Pixel rules
-----------
* Modes ``L``, ``RGB``: 8-bit, divided by 255.  ``1`` (bi-level) → ``L``.  ``P``/``PA``
  (palette) → expanded to RGB(A) through the palette.  ``CMYK``/``YCbCr``/… → RGB.
* **Alpha** (``LA``, ``RGBA``, ``PA``, palette transparency) is **composited on black**:
  ``value × alpha / 255``.  Medical images have black backgrounds, so transparent pixels
  become background; images whose alpha is 255 everywhere (the common case) are unchanged.
* **16-bit and other high-bit-depth images** (``I;16*``, ``I``, ``F``): by default each image
  is **min–max scaled** to ``[0, 1]`` (``high_bit="minmax"``): many 16-bit medical PNG/TIFFs
  hold 10–14-bit data, and dividing by 65535 would leave them almost black.  A constant
  image becomes all zeros.  ``high_bit="full"`` divides by 65535 instead (keeps absolute
  intensities comparable between images).  A ``window`` overrides both.
* ``window=(center, width)`` (DICOM VOI convention, in stored/rescaled units) maps
  ``[center − width/2, center + width/2]`` linearly to ``[0, 1]`` with clipping.  It applies
  to every format (for 8-bit images the units are 0–255).
* **DICOM**: stored values → ``RescaleSlope``/``RescaleIntercept`` (modality LUT) → VOI window:
  the ``window`` argument if given, else the header's first ``WindowCenter``/``WindowWidth``,
  else min–max of the rescaled image → ``MONOCHROME1`` images are inverted (``1 − x``) so that
  higher values are always brighter.  Colour DICOM (RGB/YBR) is converted to RGB and divided
  by ``2**BitsStored − 1``.  Multi-frame DICOM is refused (read it as a volume).
* Multi-page TIFF/GIF: the first page is read.
* **Pixel budget**: an image may hold at most :func:`max_pixels` pixels (40 million, e.g. 6300×6300; the
  environment variable ``MEDAD_MAX_PIXELS`` sets another), checked from the header before any pixel is
  decoded.  A larger JPEG is decoded reduced by 2, 4 or 8 (Pillow's draft mode) to fit; any other larger
  image (a decompression bomb: a 237 KB PNG of 13000×13000 would take gigabytes) is refused.
* EXIF orientation is **not** applied (pixels are read as stored).

Errors
------
Every failure to read a file raises :class:`ImageReadError` (a ``ValueError``) whose message
names the file, says what is wrong and what to do.  Missing optional libraries raise
:class:`MissingDependencyError` (an ``ImportError``) with the ``pip install`` line.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import volumes
from .formats import ImageReadError, MissingDependencyError, array_to_tensor, require_module, suffix_of

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageReadError",
    "MissingDependencyError",
    "DecodedImage",
    "IMAGE_SUFFIXES",
    "DICOM_SUFFIXES",
    "VOLUME_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "file_kind",
    "is_supported_file",
    "decode_image",
    "read_image",
    "read_mask",
    "image_info",
    "to_unit_float",
    "array_to_tensor",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
VOLUME_SUFFIXES = frozenset({".mha", ".mhd", ".nii", ".nii.gz"})
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES | VOLUME_SUFFIXES
LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg", ".webp"})
DEFAULT_MAX_PIXELS = 40_000_000


def max_pixels() -> int:
    """The pixel budget of one decoded image: ``MEDAD_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get("MEDAD_MAX_PIXELS", "")
    try:
        value = int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ValueError(f"MEDAD_MAX_PIXELS must be a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise ValueError(f"MEDAD_MAX_PIXELS must be positive, got {value}")
    return value


def _over_budget(path: Path, width: int, height: int) -> ImageReadError:
    return ImageReadError(path, f"image is {width}×{height} pixels ({width * height / 1e6:.0f} million), above "
                                f"medad's budget of {max_pixels() / 1e6:g} million pixels per image",
                          "downscale it first, or set MEDAD_MAX_PIXELS higher if this machine has the memory")


def _fit_budget(path: Path, img) -> None:
    """Refuse (or, for JPEG, draft-decode reduced) an opened Pillow image above the pixel budget."""
    width, height = img.size
    budget = max_pixels()
    if width * height <= budget:
        return
    if img.format == "JPEG":  # DCT scaling by 1/2, 1/4 or 1/8: the largest reduction that still fits
        scale = math.sqrt(budget / (width * height)) / 2
        img.draft(img.mode, (max(1, int(width * scale)), max(1, int(height * scale))))
    if img.size[0] * img.size[1] > budget:
        raise _over_budget(path, width, height)


def pixel_count(path: str | os.PathLike) -> int:
    """Pixels of an image file from its header (Pillow or DICOM), without decoding them; 0 when unknown."""
    path = Path(path)
    try:
        if file_kind(path) == "image":
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
            with img:
                return img.size[0] * img.size[1]
        if file_kind(path) == "dicom":
            pydicom = require_module("pydicom", "reading DICOM files")
            header = pydicom.dcmread(str(path), force=True, stop_before_pixels=True)
            return int(getattr(header, "Rows", 0) or 0) * int(getattr(header, "Columns", 0) or 0)
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to report
        return 0
    return 0


# --------------------------------------------------------------------------- file kinds


def _sniff_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def file_kind(path: str | os.PathLike) -> str | None:
    """Return ``"image"``, ``"dicom"``, ``"volume"`` or ``None`` (not a supported file).

    The suffix decides; a file without a suffix is ``"dicom"`` when it carries the ``DICM``
    preamble.  Nothing but the first 132 bytes of suffix-less files is read.
    """
    path = Path(path)
    suf = suffix_of(path)
    if suf in IMAGE_SUFFIXES:
        return "image"
    if suf in DICOM_SUFFIXES:
        return "dicom"
    if suf in VOLUME_SUFFIXES:
        return "volume"
    if suf == "" and path.is_file() and _sniff_dicom(path):
        return "dicom"
    return None


def is_supported_file(path: str | os.PathLike) -> bool:
    """True when :func:`file_kind` recognises the file."""
    return file_kind(path) is not None


# --------------------------------------------------------------------------- decoding


@dataclass
class DecodedImage:
    """Pixels as decoded, before scaling to ``[0, 1]``.

    ``array`` is ``H×W`` (grey) or ``H×W×3`` (colour), dtype ``uint8`` (8-bit), ``uint16``/
    ``int32``/``float32`` (high bit depth) or ``float64`` (DICOM after rescale).  ``mode`` is the
    source mode (Pillow mode, ``"DICOM:<photometric>"``); ``fmt`` the detected format.
    ``lo``/``hi`` give the default value range mapped to ``[0, 1]`` (``None`` → min–max).
    """

    array: np.ndarray
    mode: str
    fmt: str
    lo: float | None = 0.0
    hi: float | None = 255.0
    invert: bool = False


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist", "check the path (and the data root)")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file", "pass an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)",
                             "the copy or download was probably interrupted: copy the file again "
                             "or delete it (or skip it: --skip-unreadable; skip_unreadable=True in Python)")


def _composite_on_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32) / 255.0
    if rgb.ndim == 3:
        a = a[..., None]
    out = np.rint(rgb.astype(np.float32) * a)
    return out.astype(np.uint8)


def _collapse_grey(arr: np.ndarray) -> np.ndarray:
    """``H×W×3`` with three identical channels → ``H×W`` (so L and RGB copies hash alike)."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return np.ascontiguousarray(arr[..., 0])
    return arr


def _decode_pil(path: Path, high_bit: str) -> DecodedImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # medad's pixel budget, checked next, decides (PIL only warns below 2×)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            _fit_budget(path, img)
            fmt = img.format or "?"
            mode = img.mode
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            arr = _pil_to_array(img, mode)
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "is not an image Pillow can identify (wrong suffix, or not "
                                   "an image at all)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image is too large ({exc})",
                             "downscale it first; medad refuses images above its pixel budget (MEDAD_MAX_PIXELS)"
                             ) from exc
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageReadError(path, f"image data is corrupt or truncated ({exc})") from exc

    if arr.dtype == np.uint8:
        return DecodedImage(_collapse_grey(arr), mode, fmt, 0.0, 255.0)
    # high bit depth
    if high_bit == "full":
        lo, hi = (0.0, 65535.0) if np.issubdtype(arr.dtype, np.integer) else (None, None)
    elif high_bit == "minmax":
        lo, hi = None, None
    else:
        raise ValueError(f"high_bit must be 'minmax' or 'full', not {high_bit!r}")
    return DecodedImage(arr, mode, fmt, lo, hi)


def _pil_to_array(img, mode: str) -> np.ndarray:
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode == "LA" or mode == "La":
        a = np.asarray(img.convert("LA"), dtype=np.uint8)
        return _composite_on_black(a[..., 0], a[..., 1])
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        if has_alpha:
            a = np.asarray(img.convert("RGBA"), dtype=np.uint8)
            return _composite_on_black(a[..., :3], a[..., 3])
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        return _composite_on_black(a[..., :3], a[..., 3])
    if mode.startswith("I;16"):
        arr = np.asarray(img)
        return arr.astype(np.uint16, copy=False) if arr.dtype != np.uint16 else arr
    if mode == "I":
        arr = np.asarray(img).astype(np.int32, copy=False)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    # CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _decode_dicom(path: Path) -> DecodedImage:
    pydicom = require_module("pydicom", "reading DICOM files")
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # pydicom raises many types on garbage
        raise ImageReadError(path, f"is not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if not _sniff_dicom(path) and "SOPClassUID" not in ds:
            raise ImageReadError(path, "is not a DICOM file (no 'DICM' preamble, no DICOM "
                                       "elements)", "give the file its proper suffix, or remove "
                                                    "it from the data folder")
        raise ImageReadError(
            path,
            "DICOM file has no pixel data (it is probably a DICOMDIR, structured report, "
            "presentation state or a header-only export)",
            "export the image series itself (files whose SOP class is an image storage), or "
            "remove this file from the data folder",
        )
    rows, columns = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows * columns > max_pixels():
        raise _over_budget(path, columns, rows)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(
            path,
            f"DICOM pixel data cannot be decoded ({exc})",
            "if the transfer syntax is compressed (JPEG/JPEG 2000/RLE), install a decoder "
            "plugin (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg), or "
            "decompress the file (e.g. gdcmconv --raw)",
        ) from exc
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(getattr(ds, "SamplesPerPixel", 1))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames) is a volume, "
                                   "not a 2-D image",
                             "convert it to a volume (.nii.gz/.mha) and build slices with "
                             "medad.data.volumes, or split the frames into single files")
    if spp == 3 or arr.ndim == 3:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        arr = np.asarray(arr)
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
        return DecodedImage(arr, f"DICOM:{photometric}", "DICOM", 0.0, float(2 ** bits - 1))

    raw = np.asarray(arr)
    values = raw.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    values = values * slope + intercept
    lo = hi = None
    wc, ww = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if wc is not None and ww is not None:
        c = float(wc[0] if _is_multi(wc) else wc)
        w = float(ww[0] if _is_multi(ww) else ww)
        if w > 0:
            lo, hi = c - w / 2.0, c + w / 2.0
    return DecodedImage(values, f"DICOM:{photometric}", "DICOM", lo, hi,
                        invert=photometric == "MONOCHROME1")


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def decode_image(path: str | os.PathLike, *, high_bit: str = "minmax") -> DecodedImage:
    """Decode ``path`` to a :class:`DecodedImage` (pixels before scaling to ``[0, 1]``).

    Used by :func:`read_image` and by the duplicate detector (which hashes ``array``).
    """
    path = Path(path)
    _check_file(path)
    kind = file_kind(path)
    if kind == "image":
        return _decode_pil(path, high_bit)
    if kind == "dicom":
        return _decode_dicom(path)
    if kind == "volume":
        vol = volumes.read_volume(path)
        if vol.shape[0] != 1:
            raise ImageReadError(
                path, f"is a 3-D volume with {vol.shape[0]} slices, not a 2-D image",
                "score it with 'medad predict' or 'medad fewshot score' (they read volumes slice by "
                "slice), or in Python use medad.data.volumes.read_volume_slice(path, index)")
        return DecodedImage(np.asarray(vol[0]), "volume", "volume", None, None)
    if suffix_of(path) == "":
        raise ImageReadError(path, "has no suffix and is not DICOM (no 'DICM' preamble)",
                             "give the file its proper suffix (.png, .jpg, .dcm, ...)")
    raise ImageReadError(
        path, f"suffix '{suffix_of(path)}' is not a supported image format",
        f"supported: {' '.join(sorted(SUPPORTED_SUFFIXES))}; convert the file, or remove it "
        "from the data folder")


def to_unit_float(decoded: DecodedImage, window: tuple[float, float] | None = None) -> np.ndarray:
    """Scale a :class:`DecodedImage` to ``float32`` in ``[0, 1]`` (rules in the module doc)."""
    arr = decoded.array
    if window is not None:
        center, width = float(window[0]), float(window[1])
        if not width > 0:
            raise ValueError(f"window width must be > 0, got window={window!r} "
                             "(window is (center, width))")
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        lo, hi = decoded.lo, decoded.hi
    is_float = np.issubdtype(arr.dtype, np.floating)
    x = arr if arr.dtype == np.float64 else arr.astype(np.float32)
    if is_float and not np.isfinite(x).all():
        x = np.where(np.isfinite(x), x, np.nan)
        finite = x[np.isfinite(x)]
        x = np.nan_to_num(x, nan=float(finite.min()) if finite.size else 0.0)
    if lo is None or hi is None:
        lo = float(x.min()) if x.size else 0.0
        hi = float(x.max()) if x.size else 0.0
    if hi > lo:
        out = (x - x.dtype.type(lo)) * x.dtype.type(1.0 / (hi - lo))
        np.clip(out, 0.0, 1.0, out=out)
        out = out.astype(np.float32, copy=False)
    else:
        out = np.zeros(x.shape, np.float32)
    if decoded.invert:
        out = 1.0 - out
    return out


def read_image(path: str | os.PathLike, *, window: tuple[float, float] | None = None,
               high_bit: str = "minmax") -> torch.Tensor:
    """Read an image file as a ``float32`` tensor ``3×H×W`` in ``[0, 1]``.

    ``window`` is ``(center, width)`` in stored (DICOM: rescaled) units; see the module doc
    for the per-format rules.  Raises :class:`ImageReadError` for unreadable files.
    """
    decoded = decode_image(path, high_bit=high_bit)
    return array_to_tensor(to_unit_float(decoded, window))


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """Read a pixel mask as a ``float32`` tensor ``1×H×W`` with values in ``{0, 1}``.

    Rule: lossless files (PNG, BMP, TIFF, DICOM, volumes) — any value > 0 (in any channel) is
    anomalous, so 0/255, 0/1 and multi-label masks all work.  Lossy JPEG/WebP masks are
    thresholded at half the range (≥ 128) to ignore compression noise.  Alpha is ignored for
    masks (the colour/grey value decides); palette (``P``) masks use the palette **index**
    (index > 0 = anomalous), as label images do.
    """
    path = Path(path)
    _check_file(path)
    if file_kind(path) == "image":
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("P", "PA"):
                    arr = np.asarray(img.getchannel(0) if img.mode == "PA" else img)
                elif img.mode in ("RGBA", "RGBa"):
                    arr = np.asarray(img.convert("RGB"))
                elif img.mode in ("LA", "La"):
                    arr = np.asarray(img.convert("L"))
                else:
                    arr = _pil_to_array(img, img.mode)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(path, f"mask is not a readable image ({exc})") from exc
    else:
        arr = decode_image(path).array
    import torch

    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if suffix_of(path) in LOSSY_SUFFIXES:
        binary = arr >= 128
    else:
        binary = arr > 0
    return torch.from_numpy(np.ascontiguousarray(binary, dtype=np.float32)).unsqueeze(0)


def image_info(path: str | os.PathLike) -> dict:
    """Cheap header information: ``{"size": (H, W), "mode": str, "format": str}``.

    Pillow images are identified without decoding the pixel data.  Raises
    :class:`ImageReadError` when the header cannot be read.
    """
    path = Path(path)
    _check_file(path)
    kind = file_kind(path)
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as img:
                w, h = img.size
                return {"size": (h, w), "mode": img.mode, "format": img.format or "?"}
        except Exception as exc:
            raise ImageReadError(path, f"is not a readable image ({exc})") from exc
    d = decode_image(path)
    return {"size": tuple(d.array.shape[:2]), "mode": d.mode, "format": d.fmt}
