"""A resumable training loop shared by all methods.

Every finished epoch is checkpointed atomically (``model.safetensors`` +
``training_state.pt``); ``resume=True`` continues after the last finished epoch
with the same optimizer state and the same per-epoch shuffling, so an
interrupted run loses at most the epoch in progress.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medad.engine.checkpoint import (MODEL_FILE, STATE_FILE, CheckpointError, load_model,
                                     load_training_state, save_model, save_training_state)


@dataclass
class TrainConfig:
    """Optimisation settings (Adam with RD4AD's β = (0.5, 0.999))."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    use_cache: bool = True
    cosine_schedule: bool = False


@dataclass
class TrainResult:
    epochs_done: int
    history: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    #: one entry per epoch: the epoch, its mean loss and what ``monitor`` measured after it
    log: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model: torch.nn.Module, make_batches: Callable[[int], Iterable[Any]],
        loss_for_batch: Callable[[Any], torch.Tensor], config: TrainConfig, *,
        meta: dict[str, Any], out_dir: str | Path | None = None, resume: bool = False,
        desc: str = "training", monitor: Callable[[], dict[str, Any]] | None = None) -> TrainResult:
    """Optimise the model's trainable parameters for ``config.epochs`` epochs.

    ``make_batches(epoch)`` yields the epoch's batches (it must be deterministic
    in ``epoch`` for resume to be exact); ``loss_for_batch`` returns their loss;
    ``monitor()``, called after every epoch, adds its measurements to the log.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=config.betas)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
                 if config.cosine_schedule else None)
    result = TrainResult(epochs_done=0)
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is not None and (out_dir / STATE_FILE).is_file():
        state = load_training_state(out_dir / STATE_FILE)
        weights, saved_meta = load_model(out_dir / MODEL_FILE, expected_method=meta["method"])
        if saved_meta.get("teacher") != meta.get("teacher") or saved_meta.get("image_size") != meta.get("image_size"):
            raise CheckpointError(f"cannot resume {out_dir}: it was trained with teacher {saved_meta.get('teacher')} "
                                  f"at {saved_meta.get('image_size')} px")
        model.load_learnable_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        result = TrainResult(int(state["epochs_done"]), list(state["history"]), float(state["train_seconds"]),
                             list(state.get("log", [])))
    progress = tqdm(range(result.epochs_done, config.epochs), desc=desc, unit="epoch",
                    initial=result.epochs_done, total=config.epochs)
    for epoch in progress:
        seed_everything(config.seed * 10_007 + epoch)
        model.train()
        started = time.perf_counter()
        losses = []
        for batch in make_batches(epoch):
            loss = loss_for_batch(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate "
                                         "or check the input images for NaN")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if scheduler is not None:
            scheduler.step()
        result.train_seconds += time.perf_counter() - started
        result.history.append(float(np.mean(losses)))
        result.epochs_done = epoch + 1
        entry = {"epoch": result.epochs_done, "loss": result.history[-1], "steps": len(losses)}
        if monitor is not None:
            with torch.no_grad():
                entry.update(monitor())
        result.log.append(entry)
        progress.set_postfix(loss=f"{result.history[-1]:.4f}")
        if out_dir is not None:
            save_model(out_dir / MODEL_FILE, model.learnable_state_dict(),
                       {**meta, "epochs": result.epochs_done, "train_config": asdict(config)})
            state = {"optimizer": optimizer.state_dict(), "epochs_done": result.epochs_done,
                     "history": result.history, "train_seconds": result.train_seconds, "log": result.log}
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            save_training_state(out_dir / STATE_FILE, state)
    model.eval()
    return result


def index_batches(n_items: int, batch_size: int, epoch: int, seed: int) -> list[torch.Tensor]:
    """A seeded random permutation of ``range(n_items)`` cut into batches.

    The last partial batch is kept, except that a single leftover image joins the
    previous batch (BatchNorm cannot train on one image with a 1×1 embedding).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    batches = list(torch.randperm(n_items, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches
