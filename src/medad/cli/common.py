"""Helpers shared by the CLI commands: configuration, run records, inputs and outputs."""

from __future__ import annotations

import argparse
import csv
import io
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medad import __version__
from medad.io_utils import write_json, write_text
from medad.visualize import heatmap_file_stems, save_overlay_pair


def load_yaml_config(path: str | None) -> dict[str, Any]:
    """Options from a YAML file (keys as the long flags, with '_' for '-')."""
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must hold a mapping of option: value")
    return data


def resolve_options(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line win over the YAML config, which wins over defaults."""
    config = load_yaml_config(getattr(args, "config", None))
    unknown = set(config) - set(defaults)
    if unknown:
        raise SystemExit(f"unknown option(s) in {args.config}: {', '.join(sorted(unknown))}")
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
            raise SystemExit(f"--model-option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = yaml.safe_load(value)
    return options


def run_record(command: str, options: dict[str, Any]) -> dict[str, Any]:
    """What a run folder records about how it was made."""
    return {
        "command": command,
        "argv": sys.argv,
        "options": options,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"medad": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "numpy": np.__version__},
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
    }


def write_scores(out_dir: Path, paths: list[str], scores: np.ndarray, labels: list[int | None] | None = None,
                 threshold: float | None = None) -> None:
    """``scores.csv`` and ``scores.json`` with one row per image."""
    rows = []
    for index, (path, score) in enumerate(zip(paths, scores)):
        row: dict[str, Any] = {"path": path, "score": float(score)}
        if labels is not None:
            row["label"] = labels[index]
        if threshold is not None:
            row["abnormal"] = bool(score > threshold)
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["path", "score"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "scores.csv", buffer.getvalue())
    write_json(out_dir / "scores.json", {"threshold": threshold, "images": rows})


def write_heatmaps(out_dir: Path, paths: list[str], images: torch.Tensor, maps: np.ndarray) -> None:
    """One side-by-side PNG (image | overlay) per image, on a colour scale shared by all images."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
    for name, image, amap in zip(heatmap_file_stems(paths), images.numpy(), maps):
        save_overlay_pair(out_dir / f"{name}.png", image, amap, vmin, vmax)


def write_run_report(out_dir: Path, title: str) -> None:
    """The HTML report of a run folder; a failure only warns (the metrics are already written)."""
    try:
        from medad.report import build_report

        report = build_report([out_dir], out_dir / "report", title=title)
        print(f"report: {report.path}")
    except Exception as error:  # noqa: BLE001 - a failed report must not hide the metrics
        print(f"medad: warning: the report could not be written ({type(error).__name__}: {error})")


def collect_image_paths(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders."""
    from medad.data.io import is_supported_file

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_supported_file(p))
            if not found:
                raise SystemExit(f"folder {path} contains no image files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise SystemExit(f"no such file or folder: {path}")
    if not paths:
        raise SystemExit("no input images given")
    return paths


def load_paths(paths: list[Path], image_size: int) -> torch.Tensor:
    """Images at the given paths as N×3×S×S."""
    from medad.data.tasks import Sample
    from medad.engine.images import load_images

    images, _ = load_images([Sample(path=p, label=0, kind="unlabelled") for p in paths], image_size)
    return images
