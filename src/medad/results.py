"""Benchmark result files in the format of ``../shared/BENCHMARKS.md``, and the helpers the benchmarks share
(command line, timings, memory, speed records, table cells).

Records are appended one at a time and the JSON is rewritten atomically after
each, so an interrupted benchmark keeps what it finished and, re-run with the
same command, skips the records it already has.
"""

from __future__ import annotations

import copy
import fcntl
import json
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medad.io_utils import write_json, write_text

RESULTS_DIR = "benchmarks/results"
#: the sections that describe this run (its machine and date), never taken from another process's save
HEADER = ("benchmark", "command", "machine", "created")
RECORD_KEY = ("method", "task", "seed", "k", "support_draw", "backbone", "image_size", "protocol", "epochs",
              "selection")


def record_identity(record: dict[str, Any]) -> str:
    """What makes an accuracy record unique (its setting, not its figures)."""
    return json.dumps([record.get(k) for k in RECORD_KEY])


def benchmark_command(script: str, argv: list[str] | None = None, environment: str = "",
                      pieces: tuple[str, ...] = ()) -> str:
    """'python benchmarks/<script> <arguments>' (``environment``, e.g. 'OMP_NUM_THREADS=1', in front): the
    command a result file records, and by which a re-run resumes it.

    ``pieces``: options that only split the work between processes sharing one results file (``--folds``,
    ``--seeds``…); they are left out with their values, so every piece records the command that regenerates it all.
    """
    arguments = shlex.join(_without_options(sys.argv[1:] if argv is None else argv, pieces))
    return " ".join(part for part in (environment, "python", f"benchmarks/{script}", arguments) if part)


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=", 1)[0] in names
        if not skipping:
            kept.append(arg)
    return kept


def read_records(name: str, directory: str | Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """The accuracy records of another benchmark's result file ([] before it has run)."""
    path = Path(directory) / f"{name}.json"
    return json.loads(path.read_text())["records"] if path.is_file() else []


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a newly spawned process (its memory and threads measured apart from this one)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def machine_description() -> str:
    """e.g. '2-core x86_64 CPU, 24 GiB, no GPU'."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {memory_gib:.0f} GiB, {gpu}"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def images_per_second(step: Callable[[], Any], n_images: int, repeats: int = 5, warmup: int = 1) -> float:
    """Median throughput of ``step`` (which processes ``n_images``) over ``repeats`` timed runs after warm-up."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return n_images / statistics.median(times)


def interleaved_timings(steps: dict[str, Callable[[], Any]], repeats: int = 7, warmup: int = 1
                        ) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of several steps run in turn (A, B, C, A, B, C, …) after ``warmup`` rounds.

    A change in the machine's load during the measurement then affects every step alike, so ratios of their
    medians hold on a shared machine; the CPU time of a process that computes on one thread does not depend
    on how long it waited for a core.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    timings: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            timings[name]["cpu"].append(time.process_time() - cpu)
            timings[name]["wall"].append(time.perf_counter() - wall)
    return timings


class BenchmarkResults:
    """``benchmarks/results/<name>.json`` with accuracy ``records`` and ``speed`` records."""

    def __init__(self, name: str, command: str, directory: str | Path = RESULTS_DIR,
                 resume: bool = True, keep: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """``resume``: continue the file of the same command: its records and every other section (selections,
        timings, figures…) are restored, so that a resumed process adds to them; the header (machine, date) is
        this run's.  ``keep``: which records are still current (e.g. after a benchmark's settings were selected
        anew); the others are dropped from the file when it is read and whenever it is merged."""
        self.path = Path(directory) / f"{name}.json"
        self.keep = keep or (lambda record: True)
        self.data: dict[str, Any] = {"benchmark": name, "command": command, "machine": machine_description(),
                                     "created": date.today().isoformat(), "records": [], "speed": []}
        previous = self._saved() if resume else None
        if previous is not None:
            self.data.update({key: value for key, value in previous.items() if key not in HEADER})
            self.data["records"] = [r for r in previous.get("records", []) if self.keep(r)]
            self.data.setdefault("speed", [])
        self._synced = self._sections()

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.data["records"]

    def has(self, **key: Any) -> bool:
        """Whether a record with these key values exists (for resuming)."""
        return any(all(record.get(k) == v for k, v in key.items()) for record in self.records)

    def add_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.save()

    def add_speed(self, record: dict[str, Any]) -> None:
        self.data["speed"] = [r for r in self.data["speed"]
                              if any(r.get(k) != record.get(k) for k in ("what", "method", "backbone", "image_size",
                                                                             "k", "batch_size"))]
        self.data["speed"].append(record)
        self.save()

    def _saved(self) -> dict[str, Any] | None:
        """The file as saved, when it holds this benchmark's command (None when absent or of another command)."""
        if not self.path.is_file():
            return None
        saved = json.loads(self.path.read_text())
        return saved if saved.get("command") == self.data["command"] else None

    def _sections(self) -> dict[str, Any]:
        """A copy of every section but the records and the header: what the file held when this process last read
        or wrote it, to tell what this process changed since from what it only read."""
        return copy.deepcopy({key: value for key, value in self.data.items() if key not in (*HEADER, "records")})

    def refresh(self) -> None:
        """Take what other processes running the same command have saved since (records and sections)."""
        saved = self._saved()
        if saved is not None:
            self._merge(saved)
        self._synced = self._sections()

    def save(self) -> None:
        """Write the file atomically, keeping what another process running the same command wrote meanwhile.

        Several processes may share one results file (e.g. one per fold): under a lock, records they
        added are merged in (by record key), and so are the entries of dict-valued sections, at any depth, that
        this process has not changed since it last read or wrote the file (:meth:`refresh`).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.refresh()
            write_json(self.path, self.data)

    def _merge(self, other: dict[str, Any]) -> None:
        known = {record_identity(r) for r in self.records}
        self.records.extend(r for r in other.get("records", []) if record_identity(r) not in known and self.keep(r))
        _merge_unchanged(self.data, {key: value for key, value in other.items() if key not in (*HEADER, "records")},
                         self._synced)

    def write_markdown(self, text: str) -> None:
        write_text(self.path.with_suffix(".md"), text)


def _merge_unchanged(mine: dict[str, Any], other: dict[str, Any], synced: dict[str, Any]) -> None:
    """A three-way merge, at any depth of nested dicts: take ``other``'s value where ``mine`` still has the one it had
    when last ``synced`` (this process did not change it) or has none but did not remove it (``other`` changed it
    since, or it was never synced); keep ``mine`` where this process changed or removed it since."""
    for key, value in other.items():
        if key not in mine:
            if key not in synced or synced[key] != value:
                mine[key] = value
        elif isinstance(value, dict) and isinstance(mine[key], dict):
            base = synced.get(key)
            _merge_unchanged(mine[key], value, base if isinstance(base, dict) else {})
        elif key in synced and mine[key] == synced[key]:
            mine[key] = value


def mean_std(values: Iterable[float], scale: float = 100.0) -> str:
    """'93.4 ± 1.2' (percent) or '—' for no values."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{scale * float(np.mean(values)):.1f} ± {scale * float(np.std(values)):.1f}"


def speed_table(speed: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of a one-class benchmark's speed records (:func:`add_one_class_speed`); none when empty."""
    if not speed:
        return []
    return ["", "## Speed (same run)", "", "| what | backbone | batch | images/s | peak RSS MiB |", "|---|---|---|---|---|",
            *(f"| {s['what']} | {s['backbone']} | {s['batch_size']} | {s['images_per_second']:.1f} | "
              f"{s['peak_rss_mib']:.0f} |" for s in speed)]


def group_records(records: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[tuple(record.get(k) for k in keys)].append(record)
    return groups


def optimiser_step(compute_loss: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """One training step (loss, backward, update) as a closure, for throughput measurements."""
    def run() -> None:
        loss = compute_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return run


def add_one_class_speed(results: BenchmarkResults, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        batch: torch.Tensor, common: dict[str, Any]) -> None:
    """Speed records of a one-class model (``.teacher``, ``.loss``, ``.predict``) on one batch, same process:
    ``train_step`` (cached teacher features), ``train_step_no_cache`` and ``teacher_student_forward``."""
    with torch.no_grad():
        cached = model.teacher(batch)

    def uncached() -> list[torch.Tensor]:
        with torch.no_grad():
            return model.teacher(batch)

    model.train()
    for what, step in (("train_step", optimiser_step(lambda: model.loss(cached), optimizer)),
                       ("train_step_no_cache", optimiser_step(lambda: model.loss(uncached()), optimizer))):
        results.add_speed({"what": what, **common, "images_per_second": images_per_second(step, len(batch)),
                           "peak_rss_mib": peak_rss_mib()})
    model.eval()
    results.add_speed({"what": "teacher_student_forward", **common,
                       "images_per_second": images_per_second(lambda: model.predict(batch), len(batch)),
                       "peak_rss_mib": peak_rss_mib()})
