"""A resumable training loop shared by all methods.

Every finished epoch is checkpointed (the pair ``training_state.pt`` +
``model.safetensors``, see :mod:`medad.engine.run_folder`); ``resume=True``
continues after the last finished epoch with the same weights, optimizer state
and per-epoch seeding, so an interrupted run loses at most the epoch in
progress and the resumed run equals an uninterrupted one.  Ctrl-C ends training
with :class:`~medad.engine.run_folder.TrainingInterrupted` (files consistent).
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

from medad.console import progress
from medad.device import grad_scaler, module_device
from medad.checkpoints import CheckpointError
from medad.engine.distributed import SINGLE_PROCESS, Workers
from medad.engine.run_folder import RunFolder, TrainingInterrupted

#: devices where Adam runs fused (one kernel for all parameters).  Not the CPU: there, with more than one torch
#: thread, torch's fused Adam left the few-shot student untrained (tests/core/test_d24fad_nn.py's collapse test
#: fails with 2 threads and passes with 1), so the CPU keeps the per-tensor loop.
FUSED_ADAM_DEVICES = ("cuda",)


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
    #: the run folder's checkpoint is written after an epoch once this long has passed since the last one, and
    #: after the last epoch (0: after every epoch); on small sets an epoch takes well under a second
    checkpoint_seconds: float = 30.0


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


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


def adam(parameters: Iterable[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam with the run's settings, fused where ``device`` has a fused implementation."""
    return torch.optim.Adam(parameters, lr=config.lr, betas=config.betas,
                            fused=device.type in FUSED_ADAM_DEVICES or None)


def fit(model: torch.nn.Module, make_batches: Callable[[int], Iterable[Any]],
        loss_for_batch: Callable[[Any], torch.Tensor], config: TrainConfig, *,
        meta: dict[str, Any], out_dir: str | Path | None = None, resume: bool = False,
        desc: str = "training", monitor: Callable[[], dict[str, Any]] | None = None,
        workers: Workers = SINGLE_PROCESS) -> TrainResult:
    """Optimise the model's trainable parameters for ``config.epochs`` epochs.

    ``make_batches(epoch)`` yields the epoch's batches (it must be deterministic
    in ``epoch`` for resume to be exact); ``loss_for_batch`` returns their loss;
    ``monitor()``, called after every epoch, adds its measurements to the log.
    Runs on the model's device, with loss scaling when that means float16.  Under torchrun (``workers``,
    :mod:`medad.engine.distributed`) every rank runs this loop on its share of each batch; the logged loss is
    the whole batch's, and rank 0 alone reads and writes the run folder (it sends a resumed state to the others).
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    device = module_device(model)
    optimizer = adam(parameters, config, device)
    scaler = grad_scaler(device)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
                 if config.cosine_schedule else None)
    result = TrainResult(epochs_done=0)
    run = RunFolder(out_dir) if out_dir is not None and workers.main else None
    saved = workers.share(run.load_checkpoint(meta["method"]) if resume and run is not None else None)
    if saved is not None:
        saved_meta = saved["meta"]
        if saved_meta.get("teacher") != meta.get("teacher") or saved_meta.get("image_size") != meta.get("image_size"):
            raise CheckpointError(f"cannot resume {out_dir}: it was trained with teacher {saved_meta.get('teacher')} "
                                  f"at {saved_meta.get('image_size')} px")
        if int(saved["epochs_done"]) > config.epochs:
            raise ValueError(f"{out_dir} already holds {saved['epochs_done']} epochs, more than the {config.epochs} "
                             "asked for")
        model.load_learnable_state_dict(saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and "scheduler" in saved:
            scheduler.load_state_dict(saved["scheduler"])
        if scaler.is_enabled() and "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        result = TrainResult(int(saved["epochs_done"]), list(saved["history"]), float(saved["train_seconds"]),
                             list(saved.get("log", [])))
    bar = progress(range(result.epochs_done, config.epochs), desc=desc, unit="epoch", initial=result.epochs_done,
                   total=config.epochs)
    saved_epochs, last_save = result.epochs_done, time.perf_counter()
    try:
        for epoch in bar:
            seed_everything(config.seed * 10_007 + epoch)
            model.train()
            started = time.perf_counter()
            losses = []
            for step, batch in enumerate(make_batches(epoch), start=1):
                loss = loss_for_batch(batch)
                batch_loss = workers.average(loss.detach())
                if not torch.isfinite(batch_loss):
                    raise NonFiniteLossError(
                        f"the training loss became {batch_loss.item()} at epoch {epoch + 1}, batch {step}; lower the "
                        f"learning rate (--lr, now {config.lr:g}) and check the training images for NaN/Inf values "
                        "(medad data check)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(batch_loss.item())
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
            bar.set_postfix(loss=f"{result.history[-1]:.4f}")
            due = time.perf_counter() - last_save >= config.checkpoint_seconds or result.epochs_done == config.epochs
            if run is not None and due:
                state = {"optimizer": optimizer.state_dict(), "epochs_done": result.epochs_done,
                         "history": result.history, "train_seconds": result.train_seconds, "log": result.log}
                if scheduler is not None:
                    state["scheduler"] = scheduler.state_dict()
                if scaler.is_enabled():
                    state["scaler"] = scaler.state_dict()
                run.save_checkpoint(model.learnable_state_dict(),
                                    {**meta, "epochs": result.epochs_done, "train_config": asdict(config)}, state)
                saved_epochs, last_save = result.epochs_done, time.perf_counter()
    except KeyboardInterrupt:
        raise TrainingInterrupted(saved_epochs if run is not None else result.epochs_done,
                                  Path(out_dir) if out_dir is not None else None) from None
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
