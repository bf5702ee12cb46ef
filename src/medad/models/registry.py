"""The methods by name: ``@register_method`` on a model class carries its kind and training defaults.

This module imports neither torch nor the model modules: :func:`methods` imports every module of
``medad.models`` on first use (so registering a method is its decorator, nothing else), and the CLI
asks it only when a command that trains or scores runs.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["one_class", "few_shot"]
KINDS: tuple[Kind, ...] = ("one_class", "few_shot")


@dataclass(frozen=True)
class TrainingDefaults:
    """A method's training budget (``medad train`` / ``medad fewshot train`` defaults)."""

    epochs: int
    batch_size: int
    lr: float = 0.005
    cosine_schedule: bool = False
    #: few-shot only: query images per task and epoch
    max_queries_per_task: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its model and config classes, kind, training defaults and one-line summary."""

    name: str
    kind: Kind
    model: type
    config: type
    training: TrainingDefaults
    summary: str
    default: bool = False
    #: frozen teachers the method takes ("a+b" names two)
    teachers: int = 1


_METHODS: dict[str, MethodInfo] = {}
_discovered = False


def register_method(name: str, *, kind: Kind, config: type, training: TrainingDefaults, summary: str,
                    default: bool = False, teachers: int = 1) -> Callable[[type], type]:
    """Class decorator: register ``name`` (a one-class or few-shot model, ``default`` for its kind)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def register(model: type) -> type:
        if name in _METHODS and _METHODS[name].model is not model:
            raise ValueError(f"method {name!r} is registered twice")
        model.method = name
        _METHODS[name] = MethodInfo(name, kind, model, config, training, summary, default, teachers)
        return model
    return register


def _discover() -> None:
    global _discovered
    if not _discovered:
        package = importlib.import_module("medad.models")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"medad.models.{module.name}")
        _discovered = True


def methods(kind: Kind | None = None) -> dict[str, MethodInfo]:
    """The registered methods (of ``kind``), each kind's default first."""
    _discover()
    chosen = [info for info in _METHODS.values() if kind is None or info.kind == kind]
    return {info.name: info for info in sorted(chosen, key=lambda info: not info.default)}


def method_info(name: str) -> MethodInfo:
    registered = methods()
    if name not in registered:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(registered)}")
    return registered[name]


def default_method(kind: Kind) -> str:
    """The method marked ``default`` for ``kind``."""
    defaults = [name for name, info in methods(kind).items() if info.default]
    if len(defaults) != 1:
        raise ValueError(f"{len(defaults)} methods of kind {kind} are marked default; exactly one must be")
    return defaults[0]


class MethodChoices:
    """The names of a kind's methods for argparse ``choices``, read from the registry only when argparse
    checks a value or formats the help (so building the parser imports no model code)."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def __iter__(self):
        return iter(methods(self.kind))

    def __contains__(self, name: object) -> bool:
        return name in methods(self.kind)
