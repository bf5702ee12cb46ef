"""Tasks: normal training images + labelled test images (+ masks, + validation).

A :class:`Task` is the unit of anomaly detection (one organ / modality / disease).  It is
built from one of three layouts, without code changes:

(i) **MVTec layout** — ``train/good``, ``test/good``, ``test/<kind>``; optional
    ``ground_truth/<kind>/<stem>_mask.png`` (or ``<stem>.png``); optional ``valid/``
    (also ``val/``, ``validation/``) with the same structure as ``test/``, its masks in
    ``ground_truth/valid/<kind>/`` (so equal file names in test and valid cannot mix up).
(ii) **Unsplit layout** — ``all/normal`` + ``all/<kind>`` (or the label folders directly in
    the root): the normals are split deterministically by ``seed`` into ``n_train_normal``
    training and ``n_test_normal`` test images (default: half train, the rest test); all
    abnormal images go to test.  The split is **duplicate-aware**: pixel-identical images
    are assigned to the same side as one unit, so no normal image leaks from train to test.
(iii) **CSV manifest** — columns ``path,label,split`` (``split`` ∈ train/test/valid,
    ``label`` ∈ normal/abnormal or 0/1), optional ``mask``, ``kind``, ``slice_index``;
    relative paths are relative to the CSV's folder.

Label folders
-------------
Folder names (case-insensitive) in :data:`NORMAL_NAMES` = ``{good, normal, notumor, no,
healthy, 0_normal}`` are normal; every other folder is an anomaly kind.  A name that is not
exactly a normal name but contains one as a word (``abnormal_normal``, ``no_tumour``,
``not-good``…) is **ambiguous** and refused; so are two normal folders in one split (e.g.
``test/good`` and ``test/normal``).  Pass ``labels={"folder": 0 or 1}`` to decide explicitly.

Files
-----
Label folders are searched recursively; entries whose name starts with ``.`` and OS junk
(``Thumbs.db``, ``desktop.ini``) are ignored (counted in ``task.meta["ignored"]``).  A file
with an unsupported suffix, or one that does not decode (empty, truncated, not an image),
raises :class:`~medad.data.io.ImageReadError` naming it; with ``skip_unreadable=True`` it is
skipped with a warning and listed in ``task.skipped``.  Nothing is dropped silently.

Leakage
-------
By default (``dedupe="train"``) training images that are pixel-identical to a test or
validation image are removed from ``train`` and listed in ``task.removed`` with the reason
(see :mod:`medad.data.leakage`); ``dedupe="none"`` keeps them.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import recipes, registry
from .folders import NORMAL_NAMES, detect_layout, finish_task, from_mvtec, from_unsplit, label_of_folder
from .manifest import from_manifest, from_volume_slices, volume_slice_samples
from .samples import (RemovedSample, Sample, SkippedFile, Task, TaskLayoutError, load_sample_image,
                      load_sample_mask)

__all__ = ["NORMAL_NAMES", "RemovedSample", "Sample", "SkippedFile", "Task", "TaskLayoutError", "detect_layout",
           "finish_task", "from_manifest", "from_mvtec", "from_unsplit", "from_volume_slices", "label_of_folder",
           "load_sample_image", "load_sample_mask", "load_task", "volume_slice_samples"]


def load_task(name_or_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
              seed: int = 0, **options) -> Task:
    """A registry task name (``headct``, ``brain_tumor``, …), a paper recipe (``d24fad_aptos``, …) or a
    folder / CSV path → Task.

    ``root`` is the data root for registry names; ``options`` go to the builder (e.g.
    ``dedupe``, ``skip_unreadable``, ``n_train_normal``, ``include_pituitary``).
    """
    if isinstance(name_or_path, str) and name_or_path in registry.REGISTRY:
        return registry.build_task(name_or_path, root=root, seed=seed, **options)
    if isinstance(name_or_path, str) and name_or_path in recipes.RECIPES:
        return recipes.build_recipe(name_or_path, root=root, seed=seed, **options)
    path = Path(name_or_path)
    if not path.exists():
        raise TaskLayoutError(
            f"{name_or_path!r} is neither a registry task ({', '.join(registry.list_tasks())}), "
            "a paper recipe (medad data list) nor an existing folder or CSV file")
    layout = detect_layout(path)
    if layout == "manifest":
        if path.is_dir():
            path = next(e for e in path.iterdir() if e.suffix.lower() == ".csv")
        return from_manifest(path, **options)
    if layout == "mvtec":
        return from_mvtec(path, **options)
    return from_unsplit(path, seed=seed, **options)
