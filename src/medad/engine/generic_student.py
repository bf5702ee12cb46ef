"""Generic students for test-time adaptation (:mod:`medad.models.adapted_student`): an RD4AD student trained on the
training normals of several tasks, never on the task it will score nor on any image that near-copies one it will
score.

A :class:`GenericStudentRecipe` names the source tasks and the training; :func:`train_generic_student_on` applies it,
leaving out the sources of the target task (:func:`own_sources`) and every source image with a near-copy among the
images to be scored (``avoid``), and says what it left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from medad.backbones.base import Teacher
from medad.data.images import load_images
from medad.data.near_duplicates import drop_near_duplicates
from medad.data.tasks import Sample, load_task
from medad.io_utils import atomic_path
from medad.models.adapted_student import teacher_features, train_generic_student

__all__ = ["GenericStudentRecipe", "own_sources", "source_features", "source_samples", "train_generic_student_on"]

#: tasks made from another task's images (re-processed copies, a subset, synthetic lesions on them): they count as
#: that task's source
SAME_SOURCE = {"brainmri": "brain_tumor", "brain_tumor_pituitary": "brain_tumor", "brainmri_synthetic": "brain_tumor",
               "headct_synthetic": "headct"}


@dataclass(frozen=True)
class GenericStudentRecipe:
    """Which tasks' training normals a generic student learns from (``per_source`` of each, evenly spaced, and their
    horizontal flips), through which teacher at which size, and for how long."""

    sources: tuple[str, ...]
    teacher: str = "efficientnet_lite0"
    image_size: int = 128
    per_source: int = 150
    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 0.005

    def as_dict(self) -> dict:
        return {**asdict(self), "sources": list(self.sources)}


def own_sources(task: str, sources: Sequence[str]) -> set[str]:
    """The sources that share ``task``'s images (itself, and tasks re-processed from the same images)."""
    root = SAME_SOURCE.get(task, task)
    return {s for s in sources if SAME_SOURCE.get(s, s) == root}


def source_samples(task: str, per_source: int) -> list[Sample]:
    """``per_source`` training normals of a task, evenly spaced."""
    train = load_task(task).train
    return train[::max(1, len(train) // per_source)][:per_source]


def source_features(task: str, teacher: Teacher, recipe: GenericStudentRecipe, cache: Path | None = None
                    ) -> list[torch.Tensor]:
    """The teacher features (float16) of a source's images followed by their horizontal flips; cached in folder
    ``cache`` when it is given (one file per task, teacher, size and ``per_source``)."""
    path = cache / _cache_name(task, recipe) if cache is not None else None
    if path is not None and path.is_file():
        return torch.load(path)
    images, _ = load_images(source_samples(task, recipe.per_source), recipe.image_size, desc=task)
    features = [stage.half() for stage in teacher_features(teacher, torch.cat([images, images.flip(-1)]))]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(features, tmp)
    return features


def _cache_name(task: str, recipe: GenericStudentRecipe) -> str:
    name = Path(task).name
    if name != task:  # a task given by its folder: the path's hash keeps two folders of one name apart
        name += "-" + hashlib.sha1(task.encode()).hexdigest()[:8]
    return f"{name}_{recipe.teacher}_{recipe.image_size}px_{recipe.per_source}.pt"


def train_generic_student_on(teacher: Teacher, recipe: GenericStudentRecipe, target: str, avoid: Sequence[Sample],
                             seed: int = 0, cache: Path | None = None, progress: bool = True
                             ) -> tuple[dict[str, torch.Tensor], dict]:
    """A generic student for scoring ``avoid``, images of task ``target``: trained on the recipe's sources except
    ``target``'s own, each source without the images that near-copy one of ``avoid``.  Returns the student's state
    and what it was trained on (``sources``, ``images`` with flips, ``dropped_near_copies`` per source)."""
    left_out = own_sources(target, recipe.sources)
    parts, dropped = [], {}
    for source in recipe.sources:
        if source in left_out:
            continue
        samples = source_samples(source, recipe.per_source)
        kept, removed = drop_near_duplicates(samples, avoid, why=f"{target} evaluation")
        kept_ids = {id(s) for s in kept}
        keep = torch.tensor([id(s) in kept_ids for s in samples])
        features = source_features(source, teacher, recipe, cache)
        parts.append([stage[torch.cat([keep, keep])] for stage in features])
        dropped[source] = len(removed)
    if not parts:
        raise ValueError(f"no source task is left to train a generic student for {target}")
    features = [torch.cat(stage) for stage in zip(*parts, strict=True)]
    state = train_generic_student(teacher, features, recipe.steps, recipe.batch_size, recipe.learning_rate,
                                  seed=seed, progress=progress)
    return state, {"sources": [s for s in recipe.sources if s not in left_out], "images": len(features[0]),
                   "left_out": sorted(left_out), "dropped_near_copies": dropped}
