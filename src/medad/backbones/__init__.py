"""Frozen ImageNet teachers with a common feature interface.

Only ``DEFAULT_TEACHER`` is defined here; the other names import torch and timm, so they load on first
use and ``medad --help`` starts without them.
"""

DEFAULT_TEACHER = "efficientnet_lite0"

_LAZY = {"FeatureStage": "base", "MissingWeightsError": "base", "Teacher": "base",
         "available_teachers": "registry", "build_teacher": "registry",
         "register_teacher": "registry"}

__all__ = ["DEFAULT_TEACHER", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
