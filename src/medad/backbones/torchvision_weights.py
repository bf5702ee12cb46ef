"""ImageNet weights of the torchvision ResNets / WideResNets (the papers' WideResNet-50 setting).

The torchvision checkpoints load strictly into timm's ResNets of the same name (same layer names and shapes).

Weights are resolved offline first: an explicit file, then
``$MEDAD_WEIGHTS_DIR/<torchvision file name>``, then the torch hub cache
(``~/.cache/torch/hub/checkpoints/<file name>``, where torchvision stores its
downloads).  Only when none exists and ``MEDAD_OFFLINE`` is not set does it try
torchvision's download; if that fails too, :class:`MissingWeightsError` says
which file is expected where.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision

from medad.backbones.base import MissingWeightsError

#: ImageNet normalisation of the torchvision models
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

WEIGHTS_ENUMS = {
    "wide_resnet50_2": torchvision.models.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}


def expected_weight_paths(arch: str) -> list[Path]:
    """Where the offline lookup searches for ``arch``'s ImageNet checkpoint, in order."""
    filename = os.path.basename(WEIGHTS_ENUMS[arch].url)
    paths = []
    if os.environ.get("MEDAD_WEIGHTS_DIR"):
        paths.append(Path(os.environ["MEDAD_WEIGHTS_DIR"]) / filename)
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    return paths


def resolve_state_dict(arch: str, weights: str | Path) -> dict[str, torch.Tensor]:
    """Load ``arch``'s ImageNet ``state_dict`` from ``weights`` ("imagenet" or a file path)."""
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise MissingWeightsError(f"{arch} weights file not found: {path}")
        return torch.load(path, map_location="cpu", weights_only=True)
    candidates = expected_weight_paths(arch)
    for path in candidates:
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    weights_enum = WEIGHTS_ENUMS[arch]
    hint = (f"{arch} ImageNet weights are not on this machine. Put {os.path.basename(weights_enum.url)} "
            f"(from {weights_enum.url}) at {candidates[-1]}, or set MEDAD_WEIGHTS_DIR to its folder, "
            f"or pass --weights PATH")
    if os.environ.get("MEDAD_OFFLINE"):
        raise MissingWeightsError(hint)
    try:
        return weights_enum.get_state_dict(progress=True)
    except Exception as error:  # no network, proxy, …: every failure means the same to the user
        raise MissingWeightsError(f"{hint} (download failed: {error})") from error
