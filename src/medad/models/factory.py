"""Build a model by method name, and rebuild a trained one from its checkpoint.

The model modules (torch, timm) are imported when a model is built, so that the CLI can read this module's
method names while it builds its parser.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medad.engine.checkpoint import CheckpointError, load_model

if TYPE_CHECKING:
    import torch


#: few-shot methods, the recommended one first (``docs/METHODS.md`` says why it replaces the paper's model)
FEWSHOT_METHODS = ("d24fad_nn", "d24fad")
DEFAULT_FEWSHOT_METHOD = FEWSHOT_METHODS[0]
#: training budget of each few-shot method: D²4FAD-NN takes many small steps (≈ 1,000 on four tasks),
#: the paper's model the budget of medad's earlier benchmark
FEWSHOT_TRAINING = {
    "d24fad_nn": {"epochs": 32, "batch_size": 8, "max_queries_per_task": 64},
    "d24fad": {"epochs": 10, "batch_size": 16, "max_queries_per_task": 256},
}


def _config_from(config_class, values: dict[str, Any] | None):
    values = values or {}
    known = {f.name for f in fields(config_class)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} option(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(known))}")
    return config_class(**values)


def model_classes() -> dict[str, tuple[type, type]]:
    """method name → (model class, config class)."""
    from medad.models.d24fad import D24FAD, D24FADConfig
    from medad.models.d24fad_nn import D24FADNN, D24FADNNConfig
    from medad.models.rd4ad import RD4AD, RD4ADConfig

    classes: dict[str, tuple[type, type]] = {"rd4ad": (RD4AD, RD4ADConfig), "d24fad": (D24FAD, D24FADConfig),
                                             "d24fad_nn": (D24FADNN, D24FADNNConfig)}
    try:
        from medad.models.pdd import PDD, PDDConfig
    except ImportError:
        return classes
    classes["pdd"] = (PDD, PDDConfig)
    return classes


def build_model(method: str, teacher: str, config: dict[str, Any] | None = None,
                teacher_weights: str | Path | None = "imagenet") -> torch.nn.Module:
    """A fresh (untrained) model; ``teacher`` may be "a+b" for two-teacher methods."""
    classes = model_classes()
    if method not in classes:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(sorted(classes))}")
    model_class, config_class = classes[method]
    return model_class.from_teacher_names(teacher, _config_from(config_class, config), teacher_weights)


def _saved_config(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model options, completed with the ``legacy_defaults`` of options added after it was saved."""
    classes = model_classes()
    legacy = getattr(classes[meta["method"]][1], "legacy_defaults", {}) if meta.get("method") in classes else {}
    return {**legacy, **(meta.get("config") or {})}


def load_trained_model(checkpoint: str | Path, teacher_weights: str | Path | None = "imagenet",
                       expected_method: str | tuple[str, ...] | None = None, device: str | torch.device = "cpu"
                       ) -> tuple[torch.nn.Module, dict[str, Any]]:
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

