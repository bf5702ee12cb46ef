"""The run folder: every file medad keeps in an ``--out`` folder, and the rules for writing there.

The CLI, the evaluation and the report find files only through the names here.

==============================================  ==========================================================
``config.json``                                 resolved options, versions, seed (written after validation)
``model.safetensors``                           weights + metadata, with the number of finished epochs
``training_state.pt``                           weights, optimiser state, epochs, loss history (``--resume``)
``train_log.json``                              epochs, loss per epoch, training seconds
``metrics.json``, ``scores.csv|json``           ``medad evaluate``; ``scores.*`` also from predict / score
``volume_scores.csv``, ``anomaly_maps/``        per-volume scores and anomaly-map volumes (predict / score)
``heatmaps/`` (+ ``index.csv``)                 heat-map figures
``skipped_files.csv``                           inputs skipped with ``--skip-unreadable`` and why
``demo.json``, ``model/``, ``phantoms/``        ``medad demo`` (its few-shot model, its synthetic tasks)
``fewshot_metrics_<task>.json`` …               ``medad fewshot evaluate`` (names below)
``report/``                                     the HTML report of the folder
``.medad.lock``                                 PID, host and command of the run writing here
``.medad-replaced/``                            the run ``--overwrite`` replaces, until the new run saves
==============================================  ==========================================================

Rules
-----
* A folder that holds a run (or the outputs a command would write) is only written into with
  ``--resume`` or ``--overwrite``; ``--overwrite`` removes the files medad knows, nothing else.
* One writer at a time: a lock file names the process; a lock whose process is gone (same host) is stale
  and replaced with a warning.
* A fresh training run that fails or is interrupted before its first epoch is saved leaves no folder behind.
* ``--overwrite`` of a training run moves the old run aside (``.medad-replaced/``) and deletes it only once the
  new run has saved its first checkpoint; a new run that fails or is interrupted before that puts the old run
  back as it was (after a kill, the next command in the folder does).
* The checkpoint pair: ``training_state.pt`` is self-contained (it also holds the weights and metadata) and
  is written first, ``model.safetensors`` second, both atomically and with Ctrl-C held back until both are
  in place.  Resume reads the state; a model file behind it (a kill between the two writes) is rewritten.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medad import console
from medad.checkpoints import (MODEL_FILE, STATE_FILE, CheckpointError, load_model, load_training_state,
                                     read_meta, save_model, save_training_state)
from medad.io_utils import write_json, write_text

CONFIG_FILE = "config.json"
TRAIN_LOG_FILE = "train_log.json"
METRICS_FILE = "metrics.json"
SCORES_CSV = "scores.csv"
SCORES_JSON = "scores.json"
VOLUME_SCORES_CSV = "volume_scores.csv"
ANOMALY_MAPS_DIR = "anomaly_maps"
HEATMAPS_DIR = "heatmaps"
HEATMAP_INDEX = "index.csv"
SKIPPED_FILE = "skipped_files.csv"
DEMO_FILE = "demo.json"
REPORT_DIR = "report"
LOCK_FILE = ".medad.lock"
REPLACED_DIR = ".medad-replaced"
DEMO_MODEL_DIR = "model"
DEMO_PHANTOMS_DIR = "phantoms"

FEWSHOT_SCORES = re.compile(r"^scores_(?P<task>.+)_k(?P<k>\d+)_d(?P<draw>\d+)\.csv$")
FEWSHOT_WEIGHTS = re.compile(r"^support_weights_(?P<task>.+)_k(?P<k>\d+)_d(?P<draw>\d+)\.json$")
FEWSHOT_HEATMAPS = re.compile(r"^heatmaps_(?P<task>.+)_k(?P<k>\d+)$")
FEWSHOT_METRICS_PREFIX = "fewshot_metrics_"

TRAINING_FILES = (CONFIG_FILE, MODEL_FILE, STATE_FILE, TRAIN_LOG_FILE)
EVALUATE_OUTPUTS = (METRICS_FILE, SCORES_CSV, SCORES_JSON, HEATMAPS_DIR, SKIPPED_FILE, REPORT_DIR)
PREDICT_OUTPUTS = (SCORES_CSV, SCORES_JSON, VOLUME_SCORES_CSV, ANOMALY_MAPS_DIR, HEATMAPS_DIR, SKIPPED_FILE)
DEMO_OUTPUTS = (DEMO_FILE, SCORES_CSV, SCORES_JSON, HEATMAPS_DIR, DEMO_MODEL_DIR, DEMO_PHANTOMS_DIR, REPORT_DIR)


def fewshot_metrics_file(task: str) -> str:
    return f"{FEWSHOT_METRICS_PREFIX}{task}.json"


def fewshot_scores_file(task: str, k: int | str, draw: int | str) -> str:
    """Scores of one K and support draw (``"*"`` for k / draw gives the glob of all)."""
    return f"scores_{task}_k{k}_d{draw}.csv"


def support_weights_file(task: str, k: int | str, draw: int | str) -> str:
    return f"support_weights_{task}_k{k}_d{draw}.json"


def fewshot_heatmaps_dir(task: str, k: int | str) -> str:
    return f"heatmaps_{task}_k{k}"


def fewshot_outputs(task: str) -> tuple[str, ...]:
    """Glob patterns of what ``medad fewshot evaluate`` writes for one task (the folder's report is shared)."""
    return (fewshot_metrics_file(task), fewshot_scores_file(task, "*", "*"), support_weights_file(task, "*", "*"),
            fewshot_heatmaps_dir(task, "*"))


ALL_OUTPUTS = (*TRAINING_FILES, *EVALUATE_OUTPUTS, *PREDICT_OUTPUTS, *DEMO_OUTPUTS, *fewshot_outputs("*"))


class RunFolderError(Exception):
    """A run folder that cannot be used as asked; the message names the folder and the fix."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training, after ``epochs_done`` epochs were saved consistently."""

    def __init__(self, epochs_done: int, folder: Path | None):
        self.epochs_done = epochs_done
        self.folder = folder
        if folder is None:
            text = f"interrupted after epoch {epochs_done}; nothing was saved (no run folder)"
        elif epochs_done == 0:
            text = "interrupted before the first epoch finished; nothing was saved"
        else:
            text = f"interrupted after epoch {epochs_done}; continue with `--resume` ({folder} is consistent)"
        super().__init__(text)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) inside the block and deliver it right after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunFolder:
    """One ``--out`` folder: its file paths, its lock, and what may be written there."""

    def __init__(self, path: str | Path, flag: str = "--out"):
        self.path = Path(path)
        self.flag = flag
        self._created = False
        self._overwrite = False

    def file(self, name: str) -> Path:
        return self.path / name

    def holds(self, patterns: Iterable[str]) -> list[str]:
        """Names of the entries matching ``patterns`` (file names or globs) that exist."""
        if not self.path.is_dir():
            return []
        found = {entry.name for pattern in patterns for entry in self.path.glob(pattern)}
        return sorted(found)

    # ----- claiming the folder ---------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Create the folder if needed and prove a file can be written there (before any work is done)."""
        try:
            if not self.path.is_dir():
                self.path.mkdir(parents=True)
                self._created = True
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".medad-write-test-"):
                pass
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise RunFolderError(f"{self.flag} {self.path} cannot be written ({reason}); choose a folder you can "
                                 f"write to") from None

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """Hold the folder's lock file for the block; a second writer fails at once."""
        lock = self.file(LOCK_FILE)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._acquire(lock, record)
        try:
            yield
        finally:
            self._release(lock)

    @staticmethod
    def _release(lock: Path) -> None:
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError):
            pass

    def _acquire(self, lock: Path, record: dict[str, Any]) -> None:
        with tempfile.NamedTemporaryFile("w", dir=self.path, prefix=".medad-lock-", delete=False) as handle:
            json.dump(record, handle)
        staged = Path(handle.name)
        try:
            for _ in range(3):
                try:
                    os.link(staged, lock)  # atomic: the lock appears complete or not at all
                    return
                except FileExistsError:
                    self._remove_if_stale(lock)
            raise RunFolderError(f"{self.flag} {self.path}: could not take the lock {lock}; another medad run keeps "
                                 "starting there")
        finally:
            staged.unlink(missing_ok=True)

    def _remove_if_stale(self, lock: Path) -> None:
        try:
            holder = json.loads(lock.read_text())
            pid, host = int(holder["pid"]), str(holder.get("host"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            console.warn(f"removed an unreadable lock file {lock}")
            lock.unlink(missing_ok=True)
            return
        if host != socket.gethostname():
            raise RunFolderError(f"another medad run (PID {pid} on {host}, `{holder.get('command')}`) is writing to "
                                 f"{self.path}; wait for it, choose another {self.flag}, or delete {lock} if no "
                                 "such run is active")
        if _pid_alive(pid):
            raise RunFolderError(f"another medad run (PID {pid}, `{holder.get('command')}`, started "
                                 f"{holder.get('started')}) is writing to {self.path}; wait for it to finish or "
                                 f"choose another {self.flag}")
        console.warn(f"removed a stale lock in {self.path}: PID {pid} (`{holder.get('command')}`) is no longer running")
        lock.unlink(missing_ok=True)

    def remove(self, names: Iterable[str]) -> None:
        """Delete these entries (files or folders) of the run folder."""
        for name in names:
            target = self.file(name)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    @contextmanager
    def for_outputs(self, command: str, owned: Sequence[str], *, overwrite: bool = False
                    ) -> Iterator[RunFolder]:
        """Claim the folder for a command writing ``owned`` (names or globs): writable, locked, nothing replaced
        unless ``overwrite`` (which removes the old ones now)."""
        self.check_writable()
        with self.locked(command):
            existing = self.holds(owned)
            if existing and not overwrite:
                raise RunFolderError(f"{self.flag} {self.path} already holds {_listing(existing)} from an earlier "
                                     f"run; pass --overwrite to replace them, or choose another {self.flag}")
            self.remove(existing)
            try:
                yield self
            except BaseException:
                self._remove_if_created_and_empty()
                raise

    @contextmanager
    def for_training(self, command: str, *, resume: bool, overwrite: bool) -> Iterator[RunFolder]:
        """Claim the folder for training: writable, locked, and holding a run only when resuming it.

        ``--overwrite`` removes the old run in :meth:`start`, after the options were validated.  A fresh run
        that stops before its first checkpoint removes what it wrote (and the folder, if it made it).
        """
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite exclude each other: continue the run, or replace it")
        self.check_writable()
        self._overwrite = overwrite
        with self.locked(command):
            self._settle_replaced()
            existing = self.holds(ALL_OUTPUTS)
            if resume and not self.file(STATE_FILE).is_file():
                raise RunFolderError(f"--resume: {self.path} holds no training state ({STATE_FILE}) to continue; "
                                     "drop --resume to start a new run there")
            if not resume and existing and not overwrite:
                raise RunFolderError(f"{self.flag} {self.path} already holds a run ({self._describe_run(existing)}); "
                                     f"pass --resume to continue it, --overwrite to replace it, or choose another "
                                     f"{self.flag}")
            try:
                yield self
            except BaseException:
                if not resume and not self.file(MODEL_FILE).is_file():
                    self._discard()
                raise

    def _describe_run(self, existing: list[str]) -> str:
        done = self.epochs_done()
        if done is not None:
            return f"{done} finished epoch{'s' if done != 1 else ''}"
        return _listing(existing)

    def _discard(self) -> None:
        """Remove what a run that saved no checkpoint wrote, and put back the run it was replacing."""
        if self.file(REPLACED_DIR).is_dir():
            self._settle_replaced()
        else:
            self.remove(TRAINING_FILES)
        self._remove_if_created_and_empty()

    def _settle_replaced(self) -> None:
        """A run moved aside by ``--overwrite``: dropped once the new run has a checkpoint, else restored."""
        aside = self.file(REPLACED_DIR)
        if not aside.is_dir():
            return
        if self.file(MODEL_FILE).is_file():
            shutil.rmtree(aside)
            return
        self.remove(self.holds(ALL_OUTPUTS))
        for entry in aside.iterdir():
            os.replace(entry, self.file(entry.name))
        aside.rmdir()
        console.warn(f"the new run in {self.path} saved no checkpoint; the run it was replacing is back as it was")

    def _remove_if_created_and_empty(self) -> None:
        """Remove the folder this claim created when nothing but its own lock is in it."""
        if not self._created or {entry.name for entry in self.path.iterdir()} - {LOCK_FILE}:
            return
        self._release(self.file(LOCK_FILE))
        try:
            self.path.rmdir()
        except OSError:
            pass

    def start(self, config: dict[str, Any]) -> None:
        """Begin a validated training run: remove the old run if overwriting, then write ``config.json``."""
        if self._overwrite:
            old = self.holds(ALL_OUTPUTS)
            if old:
                self.file(REPLACED_DIR).mkdir()
                for name in old:
                    os.replace(self.file(name), self.file(REPLACED_DIR) / name)
        write_json(self.file(CONFIG_FILE), config)

    # ----- records ---------------------------------------------------------------------------------------------

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.file(CONFIG_FILE).read_text())
        except FileNotFoundError:
            raise RunFolderError(f"{self.path} has no {CONFIG_FILE}; it is not a medad training run") from None

    def write_json(self, name: str, data: Any) -> Path:
        write_json(self.file(name), data)
        return self.file(name)

    def write_csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        write_text(self.file(name), buffer.getvalue())
        return self.file(name)

    def write_train_log(self, epochs: int, history: list[float], seconds: float,
                        per_epoch: list[dict[str, Any]] | None = None) -> None:
        """``train_log.json``: loss per epoch and, where the training logged more (the few-shot collapse
        monitor), one entry per epoch."""
        record: dict[str, Any] = {"epochs": epochs, "loss": history, "train_seconds": seconds}
        if per_epoch:
            record["per_epoch"] = per_epoch
        self.write_json(TRAIN_LOG_FILE, record)

    def write_skipped(self, skipped: Sequence[tuple[str, str]]) -> Path | None:
        """``skipped_files.csv`` (path, reason) when files were skipped; nothing otherwise."""
        if not skipped:
            return None
        return self.write_csv(SKIPPED_FILE, ["path", "reason"], skipped)

    # ----- the checkpoint pair ---------------------------------------------------------------------------------

    def epochs_done(self) -> int | None:
        """Finished epochs recorded in the training state (None when there is none)."""
        if not self.file(STATE_FILE).is_file():
            return None
        return int(load_training_state(self.file(STATE_FILE))["epochs_done"])

    def save_checkpoint(self, weights: dict[str, Any], meta: dict[str, Any], state: dict[str, Any]) -> None:
        """Write the training state (self-contained) and then the model file; Ctrl-C waits for both."""
        with sigint_deferred():
            save_training_state(self.file(STATE_FILE), {**state, "weights": weights, "meta": meta})
            save_model(self.file(MODEL_FILE), weights, meta)
            self._settle_replaced()

    def load_checkpoint(self, method: str) -> dict[str, Any] | None:
        """The training state to resume from (with ``weights`` and ``meta``), or None when there is none.

        A model file behind the state is rewritten from it; a state without weights (older medad) must match
        the model file's epoch.
        """
        if not self.file(STATE_FILE).is_file():
            return None
        state = load_training_state(self.file(STATE_FILE))
        done = int(state["epochs_done"])
        if "weights" not in state:
            weights, meta = load_model(self.file(MODEL_FILE), expected_method=method)
            if int(meta.get("epochs", -1)) != done:
                raise CheckpointError(f"{self.path}: {MODEL_FILE} holds epoch {meta.get('epochs')} but {STATE_FILE} "
                                      f"epoch {done}, so the run cannot be resumed exactly; start again with "
                                      "--overwrite")
            return {**state, "weights": weights, "meta": meta}
        if state["meta"].get("method") != method:
            raise CheckpointError(f"{self.path} holds a {state['meta'].get('method')!r} run, not {method!r}")
        saved_epochs = read_meta(self.file(MODEL_FILE)).get("epochs") if self.file(MODEL_FILE).is_file() else None
        if saved_epochs != done:
            console.warn(f"{self.path}: {MODEL_FILE} was behind the training state (epoch {saved_epochs} vs {done}); "
                         "rewritten from the state")
            save_model(self.file(MODEL_FILE), state["weights"], state["meta"])
        return state


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
