"""Load a list of samples into one image tensor (and masks) at the model's input size.

Files are decoded and resized in a ``DataLoader`` with worker processes, a batch of files per task, and
written into preallocated tensors.  Workers are forked where the platform can (they only decode files):
a spawned worker would first spend seconds importing torch.  A file that cannot be read stops the load
with its own error (``ImageReadError`` naming the file), raised in the calling process.
"""

from __future__ import annotations

import multiprocessing
import os

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from medad.console import progress
from medad.data.dataset import SampleDataset
from medad.data.tasks import Sample

#: files per worker task
LOAD_BATCH = 16
#: lists this short are decoded in the calling process (starting workers would cost more than it saves)
MIN_FILES_FOR_WORKERS = 64
MAX_WORKERS = 8


def default_workers(n_files: int) -> int:
    """Worker processes for decoding ``n_files``: one per available CPU core (at most 8), none for short lists."""
    if n_files < MIN_FILES_FOR_WORKERS:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_WORKERS)


class _ErrorsAsValues(Dataset):
    """A dataset whose failures are returned, not raised, so that they reach the caller unchanged."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except Exception as error:  # noqa: BLE001 - re-raised in the caller's process by load_images
            return error


def _collate(items: list) -> dict | Exception:
    errors = [item for item in items if isinstance(item, Exception)]
    return errors[0] if errors else default_collate(items)


def load_images(samples: list[Sample], image_size: int, desc: str = "loading images",
                workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """N×3×S×S images in [0, 1] and N×1×S×S masks (zeros where a sample has none).

    ``workers``: decoding processes (default :func:`default_workers`; 0 decodes in this process).
    """
    if not samples:
        raise ValueError("no images to load: the sample list is empty")
    workers = default_workers(len(samples)) if workers is None else workers
    fork = "fork" in multiprocessing.get_all_start_methods() and workers > 0
    loader = DataLoader(_ErrorsAsValues(SampleDataset(samples, image_size)), batch_size=LOAD_BATCH,
                        num_workers=workers, collate_fn=_collate, multiprocessing_context="fork" if fork else None)
    images = torch.empty(len(samples), 3, image_size, image_size)
    masks = torch.empty(len(samples), 1, image_size, image_size)
    for batch in progress(loader, desc=desc, leave=False, unit="batch"):
        if isinstance(batch, Exception):
            raise batch
        images[batch["index"]] = batch["image"]
        masks[batch["index"]] = batch["mask"]
    return images, masks
