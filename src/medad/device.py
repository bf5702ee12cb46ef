"""Where models run: ``auto`` / ``cpu`` / ``cuda[:N]`` / ``mps``, and the precision policy per device.

On CUDA the teacher and student networks run under autocast (bfloat16 where the GPU supports it, float16
with loss scaling otherwise), convolutions use ``channels_last`` and ``cudnn.benchmark`` picks their
kernels.  Everywhere else models run in float32: bfloat16 on CPUs without native support is far slower.
Distances, anomaly maps and scores are always computed in float32.
"""

from __future__ import annotations

import itertools
import re
from contextlib import AbstractContextManager, nullcontext

import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The device a spec names; ``auto`` is the first CUDA GPU when there is one, else the CPU.

    Raises ``ValueError`` with the reason when the named device is not usable on this machine.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not DEVICE_PATTERN.fullmatch(spec):
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but this machine has no usable CUDA GPU (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but Apple's Metal backend is not available here; use --device cpu")
    return device


def select_device(spec: str | torch.device = "auto") -> torch.device:
    """:func:`resolve_device`, and on CUDA let cuDNN benchmark its convolution kernels (fixed input sizes)."""
    device = resolve_device(spec)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision used on ``device`` (None: float32)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> AbstractContextManager:
    """Mixed precision on CUDA, a no-op elsewhere."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, enabled only for float16 training (bfloat16 and float32 do not need it)."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(device) == torch.float16)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (or buffers); the CPU for a module that has neither."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def to_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to ``device`` in place (``channels_last`` on CUDA, where it speeds up convolutions)."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model
