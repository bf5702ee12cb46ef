"""Helpers shared by the CLI commands: configuration, device, run records, inputs and outputs.

Every command module imports this one while the parser is built, so it must not import torch or
matplotlib: the helpers that need them import them when they run.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from medad import __version__, console
from medad.cli.errors import CliError
from medad.data.quality import MIN_SIDE
from medad.engine.scorers import DEFAULT_FEWSHOT_METHOD, FEWSHOT_METHODS, ScoringModel, load_scorer
from medad.engine.run_folder import REPORT_DIR, SCORES_CSV, SCORES_JSON, RunFolder
from medad.options import OptionError, number_type, parse_threshold

if TYPE_CHECKING:
    import torch


def load_yaml_config(path: str | None) -> dict[str, Any]:
    """Options from a YAML file (keys as the long flags, with '_' for '-')."""
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CliError(f"--config {path} cannot be read ({error})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise CliError(f"--config {path} must hold a mapping of option: value")
    return data


def resolve_options(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line win over the YAML config, which wins over defaults."""
    config = load_yaml_config(getattr(args, "config", None))
    unknown = set(config) - set(defaults)
    if unknown:
        raise CliError(f"--config {args.config}: unknown option(s) {', '.join(sorted(unknown))}; known: "
                       f"{', '.join(sorted(defaults))}")
    resolved = {}
    for key, default in defaults.items():
        value = getattr(args, key, None)
        resolved[key] = value if value is not None else config.get(key, default)
    return resolved


def parse_model_options(pairs: list[str] | None) -> dict[str, Any]:
    """``--model-option key=value`` pairs, values parsed as YAML scalars (true, 0.1, l2w…)."""
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CliError(f"--model-option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = yaml.safe_load(value)
    return options


def device_spec(text: str) -> str:
    """argparse type of ``--device``: checks the spelling (whether the device exists is checked when used)."""
    from medad.device import DEVICE_PATTERN  # torch: only commands that run a model have --device

    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}: use auto, cpu, cuda, cuda:N or mps")
    return text


def add_device_option(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device`` on a command that runs a model (``default=None`` where a config file may set it)."""
    parser.add_argument("--device", type=device_spec, default=default,
                        help="where models run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, "
                             "cuda:N or mps" + (" (default: auto)" if default is None else ""))


def select_run_device(spec: str) -> torch.device:
    """The device of ``--device``, with cuDNN tuned when it is a GPU; says where the run goes."""
    from medad.device import select_device

    device = select_device(spec)
    console.info(f"device: {describe_device(device)}")
    return device


def describe_device(device: torch.device) -> str:
    """e.g. 'cpu (float32)' or 'cuda:0 NVIDIA H100 (autocast bfloat16)'."""
    import torch

    from medad.device import autocast_dtype

    name = f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    dtype = autocast_dtype(device)
    return f"{device}{name} ({'autocast ' + str(dtype).removeprefix('torch.') if dtype else 'float32'})"


def add_scorer_options(parser: argparse.ArgumentParser) -> None:
    """``--method`` and ``--checkpoint`` of a command that scores few-shot (see :mod:`medad.engine.scorers`)."""
    parser.add_argument("--method", choices=FEWSHOT_METHODS,
                        help="d24fad_nn: the learned few-shot model (medad's bundled one unless --checkpoint names "
                             "another); patchcore: PatchCore-K on the teacher, training-free; adapted_student: "
                             "support scoring plus medad's bundled generic student fine-tuned on the references "
                             "(stronger on focal lesions, slower: it trains a few seconds per reference set) "
                             f"(default: {DEFAULT_FEWSHOT_METHOD}, or the checkpoint's)")
    parser.add_argument("--checkpoint", help="another few-shot model: a run folder, a demo folder or a .safetensors "
                                             "file (default: the bundled model of --method)")


def load_chosen_scorer(args: argparse.Namespace, device: torch.device | str) -> ScoringModel:
    """The scorer of ``--method`` / ``--checkpoint``; says which model scores."""
    scorer = load_scorer(args.method, args.checkpoint, args.weights, device)
    console.info(f"model: {scorer.name}")
    return scorer


def run_record(command: str, options: dict[str, Any], device: torch.device | None = None) -> dict[str, Any]:
    """What a run folder records about how it was made (and on which device, when given)."""
    import torch

    record = {
        "command": command,
        "argv": sys.argv,
        "options": options,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"medad": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "numpy": np.__version__},
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
    }
    if device is not None:
        record["device"] = describe_device(device)
    return record


def write_scores(run: RunFolder, paths: list[str], scores: np.ndarray, labels: list[int] | None = None) -> None:
    """``scores.csv`` and ``scores.json`` with one row per image (and its label when known)."""
    rows: list[dict[str, Any]] = []
    for index, (path, score) in enumerate(zip(paths, scores, strict=True)):
        rows.append({"path": path, "score": float(score), **({"label": labels[index]} if labels is not None else {})})
    columns = ["path", "score"] + (["label"] if labels is not None else [])
    run.write_csv(SCORES_CSV, columns, ([row[c] for c in columns] for row in rows))
    run.write_json(SCORES_JSON, {"threshold": None, "images": rows})


def write_run_report(out_dir: Path, title: str) -> None:
    """The HTML report of a run folder; a failure only warns (the metrics are already written)."""
    try:
        from medad.report import build_report

        report = build_report([out_dir], out_dir / REPORT_DIR, title=title)
        console.info(f"report: {report.path}")
    except Exception as error:  # noqa: BLE001 - a failed report must not hide the metrics
        console.warn(f"the report could not be written ({type(error).__name__}: {error})")


def threshold_option(text: str) -> str | float:
    """``--threshold``: 'auto', 'none' or a finite number."""
    try:
        return parse_threshold(text)
    except OptionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


percentile_option = number_type("threshold_percentile")


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="print only warnings and errors (results are in the output files)")


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """--skip-unreadable and --allow-degenerate for commands that read images from the command line."""
    parser.add_argument("--skip-unreadable", dest="skip_unreadable", action="store_true",
                        help="skip unreadable or unsupported files (and images with NaN/Inf values) with a warning; "
                             "they are listed in OUT/skipped_files.csv")
    parser.add_argument("--allow-degenerate", dest="allow_degenerate", action="store_true",
                        help=f"score images smaller than {MIN_SIDE} px on a side or constant (refused otherwise)")
