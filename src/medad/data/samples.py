"""Samples and tasks: the data layer's records, and reading one sample's image and mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .io import read_image, read_mask
from .volumes import read_label_slice, read_volume_slice

if TYPE_CHECKING:
    import torch


class TaskLayoutError(ValueError):
    """A folder or manifest does not form a valid task (message says what to change)."""


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` 0 = normal, 1 = abnormal; ``kind`` = label folder name.

    For a slice of a volume ``path`` is the volume, ``slice_index`` the axial index and
    ``mask_path`` the label volume.
    """

    path: Path
    label: int
    kind: str
    mask_path: Path | None = None
    slice_index: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label!r} for {self.path}")

    @property
    def name(self) -> str:
        """Short display name (file name, plus ``[z=i]`` for slices)."""
        return self.path.name if self.slice_index is None else f"{self.path.name}[z={self.slice_index}]"


@dataclass(frozen=True)
class RemovedSample:
    """A training sample removed because it duplicates evaluation images."""

    sample: Sample
    reason: str
    duplicate_of: tuple[Sample, ...] = ()


@dataclass(frozen=True)
class SkippedFile:
    """A file skipped with ``skip_unreadable=True``."""

    path: Path
    reason: str


@dataclass
class Task:
    """Normal ``train`` samples, labelled ``test`` samples, optional ``valid`` samples."""

    name: str
    train: list[Sample]
    test: list[Sample]
    valid: list[Sample] = field(default_factory=list)
    removed: list[RemovedSample] = field(default_factory=list)
    root: Path | None = None
    description: str = ""
    skipped: list[SkippedFile] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, list[Sample]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    @property
    def kinds(self) -> list[str]:
        """Anomaly kinds in test/valid (sorted)."""
        return sorted({s.kind for s in self.test + self.valid if s.label == 1})

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.test)

    def counts(self) -> dict[str, dict]:
        """``{split: {"normal": n, "abnormal": n, "kinds": {kind: n}}}`` (kinds of all labels)."""
        out = {}
        for split, samples in self.splits.items():
            kinds: dict[str, int] = {}
            for s in samples:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            out[split] = {"normal": sum(s.label == 0 for s in samples),
                          "abnormal": sum(s.label == 1 for s in samples), "kinds": kinds}
        return out

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{self.name}: train {c['train']['normal']} normal"]
        for split in ("valid", "test"):
            if self.splits[split]:
                ab = {s.kind for s in self.splits[split] if s.label == 1}
                kinds = ", ".join(f"{k} {v}" for k, v in sorted(c[split]["kinds"].items())
                                  if k in ab)
                parts.append(f"{split} {c[split]['normal']} normal + {c[split]['abnormal']} "
                             f"abnormal ({kinds})")
        if self.removed:
            parts.append(f"{len(self.removed)} train duplicates of eval images removed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable files skipped")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"Task({self.summary()})"


# --------------------------------------------------------------------------- loading


def load_sample_image(sample: Sample) -> torch.Tensor:
    """Image of a sample as ``3×H×W`` float in ``[0, 1]`` (file or volume slice)."""
    if sample.slice_index is not None:
        return read_volume_slice(sample.path, sample.slice_index)
    return read_image(sample.path)


def load_sample_mask(sample: Sample) -> torch.Tensor | None:
    """Mask of a sample as ``1×H×W`` in ``{0, 1}``, or ``None`` when it has no mask."""
    if sample.mask_path is None:
        return None
    if sample.slice_index is not None:
        return read_label_slice(sample.mask_path, sample.slice_index)
    return read_mask(sample.mask_path)
