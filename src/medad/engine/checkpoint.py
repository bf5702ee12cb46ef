"""Checkpoints: weights in safetensors with the model's metadata inside the same file.

``model.safetensors`` holds the learnable weights (never the frozen teacher) and,
in its header, a JSON document with the method, teacher, image size,
normalisation, configuration and version.  ``training_state.pt`` holds what
``--resume`` needs (optimizer state, finished epochs, history) and loads with
``torch.load(weights_only=True)``.  Both are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from medad import __version__
from medad.io_utils import atomic_path

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not fit the model asked for."""


def save_model(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write weights + metadata atomically to ``path`` (a .safetensors file)."""
    meta = {**meta, "medad_version": __version__}
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"medad": json.dumps(meta)})


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint, with clear errors for damaged or foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged or not a safetensors file ({error}); "
                              "re-run training or use another checkpoint") from error
    if "medad" not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a medad checkpoint (no 'medad' metadata)")
    return json.loads(header["medad"])


def load_model(path: str | Path, expected_method: str | tuple[str, ...] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a checkpoint; ``expected_method`` (one name or several) guards against mix-ups."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    meta = read_meta(path)
    expected = (expected_method,) if isinstance(expected_method, str) else expected_method
    if expected is not None and meta.get("method") not in expected:
        raise CheckpointError(f"{path} is a {meta.get('method')!r} checkpoint, not {' or '.join(map(repr, expected))}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged ({error}); re-run training") from error
    return state, meta


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors of many kinds all mean "unusable"
        raise CheckpointError(f"training state {path} is damaged ({error}); delete it to start afresh") from error
