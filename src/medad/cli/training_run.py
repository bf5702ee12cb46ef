"""What ``medad train`` and ``medad fewshot train`` share: options of a new or resumed run, and checks made
before the run folder is written (image size, epochs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from medad import console
from medad.cli.common import add_quiet_option, resolve_options, run_record
from medad.cli.errors import CliError
from medad.engine.run_folder import RunFolder
from medad.options import OptionError, check_numbers

if TYPE_CHECKING:
    import torch

    from medad.engine.distributed import Workers

# What a resumed run may change: how long it trains, where its data and caches are and on which device.
RESUME_MAY_CHANGE = frozenset({"epochs", "data_root", "cache_dir", "device"})


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--resume / --overwrite (exclusive), --skip-unreadable for the tasks' files, and --quiet."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue the interrupted or shorter run in --out (its options are reused; only "
                            "--epochs, --data-root, --cache-dir and --device may change)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (refused without this flag or --resume)")
    parser.add_argument("--skip-unreadable", dest="skip_unreadable", action="store_true",
                        help="skip unreadable files of the tasks with a warning; listed in OUT/skipped_files.csv")
    add_quiet_option(parser)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def training_options(run: RunFolder, args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """A new run: flags > YAML config > defaults.  ``--resume``: the run's recorded options, where a flag
    may only change what :data:`RESUME_MAY_CHANGE` names; any other differing flag is an error."""
    given = {key: value for key, value in resolve_options(args, dict.fromkeys(defaults)).items() if value is not None}
    if not args.resume:
        return {**defaults, **given}
    recorded = {**defaults, **run.read_config().get("options", {})}
    for key, value in given.items():
        if key not in RESUME_MAY_CHANGE and recorded.get(key) != value:
            raise CliError(f"--resume: {flag(key)} {value} differs from the run's {recorded.get(key)} in {run.path}; "
                           f"drop {flag(key)} to continue the run, or start a new run in another --out")
    return {**recorded, **{key: value for key, value in given.items() if key in RESUME_MAY_CHANGE}}


def with_method_defaults(options: dict[str, Any], kind: str) -> dict[str, Any]:
    """``options`` with the method (default: the registry's default of ``kind``) and its training defaults
    filled in where no flag, config or recorded run gave them."""
    from medad.models.registry import default_method, method_info

    method = options.get("method") or default_method(kind)
    info = method_info(method)
    if info.kind != kind:
        raise CliError(f"--method {method} is a {info.kind.replace('_', '-')} method; this command trains "
                       f"{kind.replace('_', '-')} methods")
    training = {key: value for key, value in info.training.as_dict().items() if key in options}
    return {**options, "method": method, **{key: value for key, value in training.items() if options[key] is None}}


def epochs_left(run: RunFolder, epochs: int) -> bool:
    """False (with a note) when a resumed run already holds ``epochs``; an error when it holds more."""
    done = run.epochs_done() or 0
    if epochs < done:
        raise CliError(f"--epochs {epochs} is fewer than the {done} epochs {run.path} already holds; nothing to "
                       f"train: use the checkpoint as it is, or pass --epochs above {done} to train on")
    if epochs == done:
        console.info(f"{run.path} already holds all {done} epochs; nothing to train (pass --epochs above {done} "
                     "to train on)")
        return False
    return True


def check_image_size(model: torch.nn.Module, image_size: int) -> None:
    """The teacher's deepest stride must divide the image size (and fit twice)."""
    stride = model.teacher.max_stride
    if image_size < 2 * stride or image_size % stride:
        suggestion = max(2 * stride, round(image_size / stride) * stride)
        raise CliError(f"--image-size {image_size} does not fit teacher {model.teacher.name}: it must be a multiple "
                       f"of its deepest stride {stride} and at least {2 * stride}; use e.g. {suggestion}")


def config_record(run: RunFolder, command: str, options: dict[str, Any], resume: bool,
                  **extra: Any) -> dict[str, Any]:
    """``config.json`` of a new run, or of a resumed one (first creation time kept, resumptions listed)."""
    record = {**run_record(command, options), **extra}
    if resume:
        previous = run.read_config()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record.update(created=previous.get("created"), resumed=[*previous.get("resumed", []), now])
    return record


@contextmanager
def training_processes() -> Iterator[Workers]:
    """The processes torchrun started (one without torchrun), joined for the block; only rank 0 prints results."""
    from medad.engine.distributed import from_environment, process_group

    workers = from_environment()
    if not workers.main:
        console.set_quiet(True)
    with process_group(workers):
        yield workers


def shared_options(run: RunFolder, args: argparse.Namespace, defaults: dict[str, Any], workers: Workers,
                   complete: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """:func:`training_options` as rank 0 resolves them (and ``complete`` fills in and checks), on every rank;
    None when a resumed run has no epochs left (:func:`epochs_left`)."""
    options = None
    if workers.main:
        options = training_options(run, args, defaults)
        if complete is not None:
            options = complete(options)
        try:
            check_numbers(options)
        except OptionError as error:
            raise CliError(f"{error} (from {'the run' if args.resume else '--config or the defaults'})") from None
        if args.resume and not epochs_left(run, options["epochs"]):
            options = None
    return workers.share(options)
