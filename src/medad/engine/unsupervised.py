"""Training of one-class models (RD4AD, PDD) on a task's normal images, with cached teacher features."""

from __future__ import annotations

from pathlib import Path

import torch

from medad.engine.training import TrainConfig, TrainResult, fit, index_batches
from medad.device import module_device
from medad.features import FeatureBank, FeatureCache, stack_features


def train_unsupervised(model: torch.nn.Module, images: torch.Tensor, config: TrainConfig, *,
                       out_dir: str | Path | None = None, resume: bool = False,
                       cache: FeatureCache | None = None, desc: str = "training") -> TrainResult:
    """Train ``model`` (with ``.loss(teacher_features)``) on N×3×S×S normal images.

    With ``config.use_cache`` the frozen teacher runs once per image (through
    ``cache``, which may be shared across runs); otherwise every step recomputes it.
    Training runs on the model's device (move the model there first).
    """
    if len(images) == 0:
        raise ValueError("cannot train on an empty set of normal images")
    meta = {**model.meta(), "image_size": int(images.shape[-1])}
    if config.use_cache:
        cache = cache or FeatureCache(model.teacher)
        features = FeatureBank(stack_features(cache, images, batch_size=max(config.batch_size, 16)),
                               module_device(model))

        def loss_for_batch(indices: torch.Tensor) -> torch.Tensor:
            return model.loss(features[indices])
    else:
        def loss_for_batch(indices: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher_features = model.teacher(images[indices])
            return model.loss(teacher_features)

    return fit(model, lambda epoch: index_batches(len(images), config.batch_size, epoch, config.seed),
               loss_for_batch, config, meta=meta, out_dir=out_dir, resume=resume, desc=desc)
