"""Training of one-class models (RD4AD, PDD) on a task's normal images, with cached teacher features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medad.device import module_device
from medad.engine.distributed import SINGLE_PROCESS, Workers, data_parallel
from medad.engine.training import TrainConfig, TrainResult, fit, index_batches
from medad.features import FeatureBank, FeatureCache, stack_features

if TYPE_CHECKING:
    from medad.models.base import OneClassModel

#: training images in the fixed probe batch on which the per-epoch relative errors are measured
PROBE_IMAGES = 16


class TermLog:
    """Per-epoch means of a model's loss terms (``model.loss_terms``) and, after each epoch, its students'
    relative errors on a fixed probe batch (``model.relative_errors``), for models that provide them."""

    def __init__(self, model: OneClassModel, probe: Callable[[], list[torch.Tensor]]) -> None:
        self.model = model
        self.probe = probe
        self.sums: dict[str, float] = {}
        self.steps = 0

    def loss(self, teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """The batch's total loss; its terms are added to the epoch's sums."""
        if not hasattr(self.model, "loss_terms"):
            return self.model.loss(teacher_features)
        terms = self.model.loss_terms(teacher_features)
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
        self.steps += 1
        return terms["total"]

    def after_epoch(self) -> dict[str, Any]:
        """The epoch's mean terms (``loss_<term>``), the relative errors and the terms' units; sums reset."""
        entry: dict[str, Any] = {f"loss_{name}": total / max(self.steps, 1) for name, total in self.sums.items()}
        self.sums, self.steps = {}, 0
        if hasattr(self.model, "relative_errors"):
            was_training = self.model.training
            self.model.eval()
            entry["relative_error"] = {name: [round(value, 5) for value in values]
                                       for name, values in self.model.relative_errors(self.probe()).items()}
            self.model.train(was_training)
        units = self.model.loss_reference_values() if hasattr(self.model, "loss_reference_values") else None
        if units is not None:
            entry["loss_units"] = units
        return entry


def train_unsupervised(model: OneClassModel, images: torch.Tensor, config: TrainConfig, *,
                       out_dir: str | Path | None = None, resume: bool = False,
                       cache: FeatureCache | None = None, desc: str = "training",
                       train_tasks: list[str] | None = None, workers: Workers = SINGLE_PROCESS) -> TrainResult:
    """Train ``model`` (with ``.loss(teacher_features)``) on N×3×S×S normal images.

    With ``config.use_cache`` the frozen teacher runs once per image (through
    ``cache``, which may be shared across runs); otherwise every step recomputes it.
    Training runs on the model's device (move the model there first).  The result's ``log`` holds, per
    epoch, the mean of every loss term and the students' relative errors where the model reports them
    (:class:`TermLog`).  ``train_tasks`` (the tasks whose normal images were pooled) goes into the metadata.
    Under torchrun (``workers``) each rank computes the teacher features of its shard of the images and
    trains on its share of every batch (:mod:`medad.engine.distributed`); the loss terms logged are rank 0's.
    """
    if len(images) == 0:
        raise ValueError("cannot train on an empty set of normal images")
    meta = {**model.meta(), "image_size": int(images.shape[-1])}
    if train_tasks is not None:
        meta["train_tasks"] = list(train_tasks)
    if config.use_cache:
        cache = cache or FeatureCache(model.teacher)
        stages = workers.gather_rows(lambda rows: stack_features(cache, images[rows], batch_size=max(config.batch_size, 16)),
                                     len(images))
        bank = FeatureBank(stages, module_device(model))

        def teacher_features(indices: torch.Tensor) -> list[torch.Tensor]:
            return bank[indices]
    else:
        def teacher_features(indices: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                return model.teacher(images[indices])

    terms = TermLog(model, lambda: teacher_features(torch.arange(min(len(images), PROBE_IMAGES))))
    local_loss = data_parallel(model, terms.loss, workers)

    def loss_for_batch(indices: torch.Tensor) -> torch.Tensor:
        rows, weight = workers.share_of(indices)
        return local_loss(teacher_features(rows)) * weight

    return fit(model, lambda epoch: index_batches(len(images), config.batch_size, epoch, config.seed),
               loss_for_batch, config, meta=meta, out_dir=out_dir, resume=resume, desc=desc,
               monitor=terms.after_epoch, workers=workers)
