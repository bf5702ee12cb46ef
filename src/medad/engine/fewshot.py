"""Episodic few-shot training (D²4FAD) and K-shot evaluation on an unseen task.

Episodes: every batch holds ``batch_size`` query images of ONE training task and
K support images of the same task drawn from its other normals (never a query
of the batch).  K is drawn per batch from ``ks`` (one model serves every K) and
the supports are re-drawn every batch.  An epoch visits each task's normals in
a random order, at most ``max_queries_per_task`` of them, so that large tasks
do not drown small ones; task batches are interleaved at random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medad.engine.distributed import SINGLE_PROCESS, Workers, data_parallel
from medad.engine.evaluate import Evaluation, evaluate_rows
from medad.engine.training import TrainConfig, TrainResult, fit
from medad.device import module_device
from medad.features import FeatureBank, FeatureCache, stack_features
from medad.models.d24fad import QueryFeatures
from medad.engine.thresholds import Threshold, support_threshold
from medad.models.support_matching import mean_pairwise_cosine

if TYPE_CHECKING:
    from medad.models.base import FewShotModel

#: images per training task in the fixed probe batch of the collapse monitor
PROBE_IMAGES_PER_TASK = 4


@dataclass
class Episode:
    task: int
    queries: torch.Tensor
    supports: torch.Tensor


def make_episodes(task_sizes: list[int], batch_size: int, ks: tuple[int, ...], epoch: int, seed: int,
                  max_queries_per_task: int = 256) -> list[Episode]:
    """The deterministic list of episodes of one epoch."""
    rng = np.random.default_rng([seed, epoch])
    episodes = []
    for task, size in enumerate(task_sizes):
        if size < min(ks) + 1:
            raise ValueError(f"training task {task} has {size} normal images; episodes need at least {min(ks) + 1}")
        order = rng.permutation(size)[:max_queries_per_task]
        for start in range(0, len(order), batch_size):
            queries = order[start:start + batch_size]
            rest = np.setdiff1d(np.arange(size), queries)
            k = int(rng.choice([k for k in ks if k <= len(rest)]))
            supports = rng.choice(rest, size=k, replace=False)
            episodes.append(Episode(task, torch.from_numpy(queries), torch.from_numpy(supports)))
    order = rng.permutation(len(episodes))
    return [episodes[i] for i in order]


def train_fewshot(model: FewShotModel, task_images: dict[str, torch.Tensor], config: TrainConfig, *,
                  ks: tuple[int, ...] = (2, 4, 8), max_queries_per_task: int = 256,
                  out_dir: str | Path | None = None, resume: bool = False,
                  cache: FeatureCache | None = None,
                  after_epoch: Callable[[], dict[str, Any]] | None = None, workers: Workers = SINGLE_PROCESS) -> TrainResult:
    """Train a few-shot model (D²4FAD or D²4FAD-NN) on the normal images of several tasks (name → N×3×S×S).

    Under torchrun (``workers``) each rank computes the teacher features of its shard of every task and
    scores its share of each episode's queries against the episode's supports (:mod:`medad.engine.distributed`).

    The result's ``log`` records, per epoch, the loss, the collapse monitor (:func:`collapse_monitor`)
    and whatever ``after_epoch()`` returns.
    """
    if not task_images:
        raise ValueError("few-shot training needs at least one training task")
    names = list(task_images)
    image_size = int(next(iter(task_images.values())).shape[-1])
    meta = {**model.meta(), "image_size": image_size, "train_tasks": names, "ks": list(ks)}
    if config.use_cache:
        cache = cache or FeatureCache(model.teacher)
        device = module_device(model)
        features = [FeatureBank(workers.gather_rows(
            lambda rows, name=name: stack_features(cache, task_images[name][rows], desc=f"teacher features {name}"),
            len(task_images[name])), device) for name in names]

        def teacher_features(task: int, indices: torch.Tensor) -> list[torch.Tensor]:
            return features[task][indices]
    else:
        def teacher_features(task: int, indices: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                return model.teacher(task_images[names[task]][indices])

    local_loss = data_parallel(model, model.loss, workers)

    def loss_for_batch(episode: Episode) -> torch.Tensor:
        queries, weight = workers.share_of(episode.queries)
        return local_loss(teacher_features(episode.task, queries),
                          teacher_features(episode.task, episode.supports)) * weight

    sizes = [len(task_images[name]) for name in names]
    probe = [torch.cat(stage) for stage in zip(*[teacher_features(task, torch.arange(min(size, PROBE_IMAGES_PER_TASK)))
                                                  for task, size in enumerate(sizes)], strict=True)]
    return fit(model, lambda epoch: make_episodes(sizes, config.batch_size, ks, epoch, config.seed, max_queries_per_task),
               loss_for_batch, config, meta=meta, out_dir=out_dir, resume=resume, desc="few-shot training",
               monitor=lambda: {**collapse_monitor(model, probe), **(after_epoch() if after_epoch else {})},
               workers=workers)


def collapse_monitor(model: FewShotModel, probe_teacher: list[torch.Tensor]) -> dict[str, list[float]]:
    """Inter-image cosine per scale of the student's and the teacher's features on a fixed probe batch.

    A student whose value approaches 1 while the teacher's stays lower has collapsed: its
    features no longer depend on the image.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        student = model.student(probe_teacher)
    model.train(was_training)
    return {"student_cos": [round(mean_pairwise_cosine(z), 4) for z in student],
            "teacher_cos": [round(mean_pairwise_cosine(t), 4) for t in probe_teacher]}


def draw_supports(n_available: int, k: int, draw: int, seed: int = 0) -> np.ndarray:
    """Indices of the ``draw``-th random support set of size K (deterministic)."""
    if k > n_available:
        raise ValueError(f"K={k} support images requested but only {n_available} normal images are available")
    rng = np.random.default_rng([seed, k, draw])
    return np.sort(rng.choice(n_available, size=k, replace=False))


def encode_queries(model: FewShotModel, images: torch.Tensor, batch_size: int = 32) -> QueryFeatures:
    """A few-shot model's features of N query images, computed in batches (any model whose query features
    have ``concat``: D²4FAD's, PatchCore-K's)."""
    parts = [model.encode_queries(images[start:start + batch_size]) for start in range(0, len(images), batch_size)]
    return type(parts[0]).concat(parts)


def evaluate_fewshot(model: FewShotModel, support_images: torch.Tensor, test_images: torch.Tensor, labels,
                     masks: torch.Tensor | None = None, batch_size: int = 32,
                     queries: QueryFeatures | None = None) -> Evaluation:
    """Score every test image against one support set (support features computed once).

    ``queries`` (from :func:`encode_queries`) lets several support draws share the
    test images' features, which do not depend on the supports.
    """
    supports = model.prepare_supports(support_images)
    if queries is None:
        queries = encode_queries(model, test_images, batch_size)
    return evaluate_rows(lambda rows: model.score_encoded(queries[rows], supports)[:2],
                         len(test_images), labels, masks, batch_size)

@torch.no_grad()
def leave_one_out_scores(model: FewShotModel, support_images: torch.Tensor, supports: Any = None) -> list[float]:
    """Each support's score against the other K − 1 supports (K ≥ 2): how normal images score here.  A model that
    computes them itself (``model.leave_one_out_scores``, e.g. one that fine-tunes on its supports) does, reusing
    ``supports`` prepared from these images when given."""
    if len(support_images) < 2:
        raise ValueError("threshold calibration needs at least 2 support images")
    if hasattr(model, "leave_one_out_scores"):
        return model.leave_one_out_scores(support_images, supports)
    scores = []
    for held_out in range(len(support_images)):
        others = torch.cat([support_images[:held_out], support_images[held_out + 1:]])
        _, score = model.predict(support_images[held_out:held_out + 1], model.prepare_supports(others))
        scores.append(float(score[0]))
    return scores


def auto_threshold(model: FewShotModel, support_images: torch.Tensor, names: list[str], supports: Any = None,
                   **wording) -> Threshold:
    """The 'auto' threshold of a support set (:func:`medad.engine.thresholds.support_threshold`, its rule chosen
    for the model's score units); ``supports``: prepared from these images, for models that can reuse them;
    ``wording`` (``advice``) phrases its warnings for the caller."""
    loo = leave_one_out_scores(model, support_images, supports) if len(support_images) > 1 else []
    return support_threshold(loo, names, standardised=getattr(model, "standardised_scores", False),
                             method=getattr(model, "method", None), **wording)


def calibrate_threshold(model: FewShotModel, support_images: torch.Tensor) -> float:
    """A decision threshold from the normal supports alone: the highest leave-one-out score.

    A query is flagged when it looks less normal than any support does to its peers.  Needs K ≥ 2.
    """
    return max(leave_one_out_scores(model, support_images))
