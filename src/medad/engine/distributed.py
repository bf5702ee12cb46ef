"""Data-parallel training over several processes, launched by ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc-per-node N -m medad train …`` (or ``fewshot train``) starts N processes; the launcher's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) tells each its place.
Without it a command runs as one process and nothing here does anything.

* **The global batch** is ``--batch-size``, as in one process: every rank builds the same epoch plan (same
  seed) and takes its share of each batch (rows ``rank::N``; few-shot: of each episode's queries, the
  supports shared).  Each rank's loss is weighted by its share of the batch, so the averaged gradients are
  those of the whole batch: N processes train the weights one process would, up to the order of float
  sums.  A rank whose share of a short batch is empty computes the loss of the batch's first row with
  weight 0 (every rank must take part in each step).
* **Teacher features** (the cache): each rank computes them for its shard of the images (``rank::N``),
  then the shards are exchanged, so the teacher runs once per image across the job.
* **Writing**: rank 0 alone claims the run folder, writes ``config.json``, the checkpoints and the logs;
  on ``--resume`` it reads the training state and sends it to the others.
* **Devices**: CPU processes use the gloo backend; with CUDA, each process uses GPU ``LOCAL_RANK`` and NCCL,
  and the students' BatchNorm layers become SyncBatchNorm (statistics of the global batch).  On the CPU,
  BatchNorm (RD4AD's student, PDD) normalises with each rank's share of the batch, so those models train
  close to, not exactly as, one process does; GroupNorm models (D²4FAD-NN, the default few-shot model) do not
  depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from medad.engine.run_folder import RunFolder

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def share(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.parallel:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the ranks."""
        if not self.parallel:
            return value
        value = value.clone()
        dist.all_reduce(value)  # a sum: gloo has no average
        return value / self.world

    def share_of(self, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's rows of a global batch and the weight of its loss (its share × N; see the module doc)."""
        if not self.parallel:
            return rows, 1.0
        mine = rows[self.rank::self.world]
        if len(mine) == 0:
            return rows[:1], 0.0
        return mine, len(mine) * self.world / len(rows)

    def gather_rows(self, compute: Callable[[torch.Tensor], list[torch.Tensor]], n_rows: int) -> list[torch.Tensor]:
        """``compute(indices)`` (one N×… tensor per stage, e.g. teacher features) for all ``n_rows`` rows, each rank
        computing its shard ``rank::N`` of them."""
        if not self.parallel:
            return compute(torch.arange(n_rows))
        shard = torch.arange(self.rank, n_rows, self.world)
        size = len(torch.arange(0, n_rows, self.world))  # the largest shard (rank 0's)
        local = compute(shard) if len(shard) else None
        stages = self.share(None if local is None else [(tuple(t.shape[1:]), t.dtype) for t in local])  # rank 0's
        gathered = []
        for index, (shape, dtype) in enumerate(stages):
            padded = torch.zeros(size, *shape, dtype=dtype)
            if local is not None:
                padded[:len(shard)] = local[index].cpu()
            parts = [torch.empty_like(padded) for _ in range(self.world)]
            dist.all_gather(parts, padded)
            full = torch.empty(n_rows, *shape, dtype=dtype)
            for rank, part in enumerate(parts):
                full[rank::self.world] = part[:len(range(rank, n_rows, self.world))]
            gathered.append(full)
        return gathered


#: one process, no torchrun: the default of every training function
SINGLE_PROCESS = Workers()


def from_environment() -> Workers:
    """The place torchrun's environment gives this process (rank 0 of 1 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Workers(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(workers: Workers) -> Iterator[Workers]:
    """Join torchrun's process group for the block (gloo for CPU tensors; NCCL for CUDA ones where there is CUDA)."""
    if not workers.parallel:
        yield workers
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(workers.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend)
    try:
        yield workers
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, workers: Workers) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` when several processes share a machine."""
    if workers.parallel and device.type == "cuda":
        return torch.device("cuda", workers.local_rank)
    return device


class _Loss(nn.Module):
    """A model's loss function as a module's forward, so that DistributedDataParallel sees the computation."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, *args: Any) -> torch.Tensor:
        return self.loss(*args)


def data_parallel(model: nn.Module, loss: Callable[..., torch.Tensor], workers: Workers) -> Callable[..., torch.Tensor]:
    """``loss`` itself in one process; otherwise the same computation through DistributedDataParallel, which
    averages the gradients over the ranks in the backward pass (the model's student BatchNorm layers made
    SyncBatchNorm on CUDA)."""
    if not workers.parallel:
        return loss
    device = next(p.device for p in model.parameters() if p.requires_grad)
    if device.type == "cuda":
        for name, child in model.named_children():
            if name != "teacher":
                setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return nn.parallel.DistributedDataParallel(_Loss(model, loss),
                                               device_ids=[device.index] if device.type == "cuda" else None)


class FollowerRun(RunFolder):
    """The run folder as ranks other than 0 see it: never claimed, locked or written (rank 0 does that)."""

    @contextmanager
    def for_training(self, command: str, *, resume: bool, overwrite: bool) -> Iterator[RunFolder]:
        yield self

    def start(self, config: dict[str, Any]) -> None:
        pass

    def write_skipped(self, skipped) -> None:
        pass

    def write_train_log(self, *args: Any, **kwargs: Any) -> None:
        pass


def run_folder(path: str, workers: Workers) -> RunFolder:
    """The ``--out`` folder of a training command: rank 0's to write, a :class:`FollowerRun` elsewhere."""
    return RunFolder(path) if workers.main else FollowerRun(path)
