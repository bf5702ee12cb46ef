"""What every reader shares: the read errors, optional imports, suffixes and array → tensor.

Split from :mod:`medad.data.io` so that the volume and DICOM-series readers use them without
importing the 2-D readers (which dispatch to them).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


class ImageReadError(ValueError):
    """A file could not be read as an image.  ``path`` is the offending file."""

    def __init__(self, path: str | os.PathLike, problem: str, hint: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.hint = hint or (
            "check the file (open it in an image viewer), replace or delete it, or skip such files "
            "with a warning (--skip-unreadable; skip_unreadable=True in Python)"
        )
        super().__init__(f"{self.path}: {problem}. What to do: {self.hint}.")

    def __reduce__(self):  # pickled with its fields, so that it crosses from a DataLoader worker intact
        return type(self), (self.path, self.problem, self.hint)


class MissingDependencyError(ImportError):
    """An optional format library is not installed."""


def require_module(module: str, purpose: str, pip_name: str | None = None) -> Any:
    """Import ``module`` lazily; raise :class:`MissingDependencyError` with an install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{purpose} needs the optional package '{pip_name or module}', which is not "
            f"installed: pip install {pip_name or module}"
        ) from exc


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``H×W`` or ``H×W×C`` float array → ``3×H×W`` float32 tensor (grey replicated)."""
    import torch  # imported when an image is read, not when the CLI starts

    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:  # e.g. a slice of a cached, read-only volume
        arr = arr.copy()
    t = torch.from_numpy(arr)
    if t.ndim == 2:
        return t.unsqueeze(0).expand(3, -1, -1).contiguous()
    if t.ndim == 3:
        t = t.permute(2, 0, 1)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        elif t.shape[0] == 4:
            t = t[:3]
        return t.contiguous()
    raise ValueError(f"expected a 2-D or 3-D array, got shape {tuple(arr.shape)}")
