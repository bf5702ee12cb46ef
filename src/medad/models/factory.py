"""Build a model by method name, and rebuild a trained one from its checkpoint.

The methods come from :mod:`medad.models.registry`; their modules (torch, timm) are imported when a model
is built.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medad.checkpoints import CheckpointError, load_model
from medad.models.registry import method_info

if TYPE_CHECKING:
    import torch

    from medad.models.base import AnomalyModel


def _config_from(config_class, values: dict[str, Any] | None):
    values = values or {}
    known = {f.name for f in fields(config_class)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} option(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(known))}")
    return config_class(**values)


def build_model(method: str, teacher: str, config: dict[str, Any] | None = None,
                teacher_weights: str | Path | None = "imagenet") -> AnomalyModel:
    """A fresh (untrained) model; ``teacher`` may be "a+b" for two-teacher methods."""
    info = method_info(method)
    return info.model.from_teacher_names(teacher, _config_from(info.config, config), teacher_weights)


def _saved_config(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model options, completed with the ``legacy_defaults`` of options added after it was saved."""
    legacy = getattr(method_info(meta["method"]).config, "legacy_defaults", {})
    return {**legacy, **(meta.get("config") or {})}


def load_trained_model(checkpoint: str | Path, teacher_weights: str | Path | None = "imagenet",
                       expected_method: str | tuple[str, ...] | None = None, device: str | torch.device = "cpu"
                       ) -> tuple[AnomalyModel, dict[str, Any]]:
    """The trained model of a checkpoint (file or run folder) and its metadata, on ``device``.

    Weights whose names or shapes do not fit the model the metadata describes are a :class:`CheckpointError`.
    Checkpoints hold host tensors whatever device trained them, so any checkpoint loads on any device.
    """
    from medad.device import resolve_device, to_device

    state, meta = load_model(checkpoint, expected_method)
    model = build_model(meta["method"], meta["teacher"], _saved_config(meta), teacher_weights)
    try:
        model.load_learnable_state_dict(state)
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"the weights in {checkpoint} do not fit the {meta['method']} model its metadata "
                              f"describes (teacher {meta['teacher']}): {first}; the metadata was edited or the "
                              "file is damaged, so train again or use the original file") from error
    model.eval()
    return to_device(model, resolve_device(device)), meta

