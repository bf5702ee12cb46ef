"""Data layer: images, volumes, tasks, registry, leakage checks, phantoms, datasets.

See ``docs/ARCHITECTURE.md`` (data contract) and ``docs/DATA.md`` (choices and counts).
"""

from .io import (DecodedImage, ImageReadError, MissingDependencyError, decode_image, file_kind,
                 image_info, read_image, read_mask)
from .volumes import (classify_slices, normalised_volume, read_label_slice, read_volume,
                      read_volume_slice)
from .tasks import (NORMAL_NAMES, RemovedSample, Sample, SkippedFile, Task, TaskLayoutError,
                    detect_layout, from_manifest, from_mvtec, from_unsplit, from_volume_slices,
                    load_sample_image, load_sample_mask, load_task, volume_slice_samples)
from .registry import data_root, list_tasks, task_info
from .leakage import (cross_split_duplicates, cross_task_overlap, dedupe_task, find_duplicates,
                      pixel_hash)
from .check import check_task, format_check

__all__ = [
    "DecodedImage", "ImageReadError", "MissingDependencyError", "decode_image", "file_kind",
    "image_info", "read_image", "read_mask",
    "classify_slices", "normalised_volume", "read_label_slice", "read_volume",
    "read_volume_slice",
    "NORMAL_NAMES", "RemovedSample", "Sample", "SkippedFile", "Task", "TaskLayoutError",
    "detect_layout", "from_manifest", "from_mvtec", "from_unsplit", "from_volume_slices",
    "load_sample_image", "load_sample_mask", "load_task", "volume_slice_samples",
    "data_root", "list_tasks", "task_info",
    "cross_split_duplicates", "cross_task_overlap", "dedupe_task", "find_duplicates",
    "pixel_hash",
    "make_phantom", "make_phantom_task",
    "SampleDataset",
    "check_task", "format_check",
]


#: names whose modules import torch or scipy: loaded on first use, so that ``medad data`` starts fast
_LAZY = {"SampleDataset": ".dataset", "make_phantom": ".phantom", "make_phantom_task": ".phantom"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
