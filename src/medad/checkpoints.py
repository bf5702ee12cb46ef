"""Checkpoints: weights in safetensors with the model's metadata inside the same file.

``model.safetensors`` holds the learnable weights (never the frozen teacher) and,
in its header, a JSON document with the method, teacher, image size,
normalisation, configuration and version, plus two SHA-256 digests: ``medad_sha256``
binds that document to the tensors' names and shapes (a checkpoint whose metadata
was edited, say ``image_size``, is refused instead of scoring silently with other
settings) and ``medad_weights_sha256`` covers the weights' bytes (a checkpoint whose
weights were edited or damaged on disk is refused; checkpoints written before it
was added are checked for their metadata only).  Weights holding NaN or infinite
values (a diverged run) are refused too.  ``training_state.pt`` holds what ``--resume`` needs and loads
with ``torch.load(weights_only=True)``.  Both are written atomically; which
files a run folder holds, and in which order, is :mod:`medad.engine.run_folder`'s job.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from medad import __version__
from medad.errors import CheckpointError
from medad.io_utils import atomic_path

if TYPE_CHECKING:  # torch is imported by the functions that read or write tensors, so that the CLI (which
    import torch  # uses this module's names while it builds its parser) starts without it

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


def _digest(meta_json: str, shapes: dict[str, list[int]]) -> str:
    """SHA-256 of the metadata text and every tensor's name and shape."""
    digest = hashlib.sha256(meta_json.encode())
    for name in sorted(shapes):
        digest.update(f"|{name}:{list(shapes[name])}".encode())
    return digest.hexdigest()


def _weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype and bytes (host, contiguous), in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"|{name}:{tensor.dtype}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write weights + metadata atomically to ``path`` (a .safetensors file)."""
    meta_json = json.dumps({**meta, "medad_version": __version__})
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    shapes = {key: list(value.shape) for key, value in tensors.items()}
    from safetensors.torch import save

    blob = save(tensors, metadata={"medad": meta_json, "medad_sha256": _digest(meta_json, shapes),
                                   "medad_weights_sha256": _weights_digest(tensors)})
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(canonical_safetensors(blob))


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys in sorted order.

    safetensors writes the header's metadata in hash-map order, which changes from process to process, so the
    same weights and metadata would give files with different bytes (and SHA-256); sorted, they give one file.
    """
    length = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + length]), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header with spaces to a multiple of 8 bytes
    return len(header).to_bytes(8, "little") + header + blob[8 + length:]


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint, with clear errors for damaged or foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; give a run folder holding {MODEL_FILE} or the "
                              ".safetensors file itself")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged or not a safetensors file ({error}); "
                              "re-run training or use another checkpoint") from error
    if "medad" not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a medad checkpoint (no 'medad' metadata)")
    if "medad_sha256" in header and header["medad_sha256"] != _digest(header["medad"], shapes):
        raise CheckpointError(f"the metadata of {path} no longer matches its weights (it was edited after training, "
                              "e.g. its image_size or teacher); restore the original file or train again")
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
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("medad_weights_sha256")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged ({error}); re-run training") from error
    if recorded is not None and recorded != _weights_digest(state):
        raise CheckpointError(f"the weights of {path} no longer match the digest recorded when it was saved (the file "
                              "was edited or damaged on disk); restore the original file or train again")
    check_finite_weights(state, path)
    return state, meta


def check_finite_weights(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """A :class:`CheckpointError` naming ``source`` when a floating-point weight holds NaN or infinity."""
    import torch

    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"checkpoint {source} holds NaN or infinite weights ({len(bad)} tensor(s), e.g. "
                              f"{bad[0]}): it is damaged or its training diverged, so every score would be "
                              "meaningless; use an earlier checkpoint or train again")


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors of many kinds all mean "unusable"
        raise CheckpointError(f"training state {path} is damaged ({error}); delete it to start afresh") from error
