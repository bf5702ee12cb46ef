"""Uploaded images of ``medad serve``: checked (type, size, count), saved into the app's temporary folder, read.

A file's type is decided by its content, not its name: PNG and JPEG by their signatures, DICOM by the
``DICM`` preamble.  Each is saved as ``<index>_<safe name><suffix of its type>`` so that the files keep
the order of the upload and medad's readers recognise them.  Images are read as ``medad fewshot score``
reads them (the same decoding, quality checks and resizing), so the app's scores equal the CLI's.
The pixels decoded at once, over all requests, are bounded by a :class:`PixelBudget` (one image's budget,
:func:`medad.data.io.max_pixels`, by default): concurrent uploads of huge images wait for each other.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from medad.data.io import ImageReadError, array_to_tensor, decode_image, max_pixels, pixel_count, to_unit_float
from medad.data.quality import image_problems

if TYPE_CHECKING:
    import torch

#: file signature → (type shown to the user, suffix the file is saved with)
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", 0, "PNG", ".png"), (b"\xff\xd8\xff", 0, "JPEG", ".jpg"),
              (b"DICM", 128, "DICOM", ".dcm"))
ACCEPTED = "PNG, JPEG or DICOM"


class UploadError(ValueError):
    """An upload the app refuses; the message names the file and the rule, and is shown in the page."""


@dataclass(frozen=True)
class Limits:
    """How much one request may upload."""

    max_file_bytes: int = 32 * 2**20
    max_references: int = 32
    max_queries: int = 64

    @property
    def max_request_bytes(self) -> int:
        return (self.max_references + self.max_queries) * self.max_file_bytes


@dataclass
class Upload:
    name: str  # as the user's browser sent it
    path: Path  # where it was saved


def _safe(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "image"
    return stem[:80]


def file_type(head: bytes) -> tuple[str, str] | None:
    """(type, suffix) of a file from its first 132 bytes, or None when it is no accepted type."""
    for signature, offset, kind, suffix in SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return kind, suffix
    return None


def save_uploads(files: list[tuple[str, IO[bytes]]], folder: Path, role: str, minimum: int, maximum: int,
                 limits: Limits) -> list[Upload]:
    """Check and save ``(name, stream)`` pairs into ``folder``; ``role`` names them in errors."""
    files = [(name, stream) for name, stream in files if name]
    if len(files) < minimum:
        raise UploadError(f"give at least {minimum} {role} image{'s' if minimum != 1 else ''} ({len(files)} given)")
    if len(files) > maximum:
        raise UploadError(f"at most {maximum} {role} images per request ({len(files)} given)")
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for index, (name, stream) in enumerate(files):
        data = stream.read(limits.max_file_bytes + 1)
        if len(data) > limits.max_file_bytes:
            raise UploadError(f"{role} {name}: larger than the limit of {limits.max_file_bytes / 2**20:g} MiB per file")
        kind = file_type(data[:132])
        if kind is None:
            raise UploadError(f"{role} {name}: not a {ACCEPTED} file")
        path = folder / f"{index:03d}_{_safe(name)}{kind[1]}"
        path.write_bytes(data)
        saved.append(Upload(name, path))
    return saved


class PixelBudget:
    """At most ``limit`` pixels decoded at once across threads; a larger claim waits until it fits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(max(pixels, 1), self.limit)  # one image above the limit is refused by the decoder
        with self._changed:
            self._changed.wait_for(lambda: self.in_flight + pixels <= self.limit)
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= pixels
                self._changed.notify_all()


def read_upload(upload: Upload, size: int, budget: PixelBudget | None = None) -> torch.Tensor:
    """The image as a 3×S×S tensor in [0, 1], read as ``medad fewshot score`` reads it; refuses what it refuses.

    With ``budget``, its pixels are decoded only when they fit in it."""
    from medad.data.dataset import resize_image

    budget = budget or PixelBudget(max_pixels())
    with budget.hold(pixel_count(upload.path)):
        try:
            decoded = decode_image(upload.path)
        except ImageReadError as error:
            raise UploadError(f"{upload.name}: {error.problem}") from None
        problems = image_problems(decoded.array)
        if problems:
            raise UploadError(f"{upload.name}: {'; '.join(problems.unusable + problems.degenerate)}, so its score "
                              "would mean nothing")
        return resize_image(array_to_tensor(to_unit_float(decoded)), size)
