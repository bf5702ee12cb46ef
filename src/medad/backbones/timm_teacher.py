"""Teachers built by timm with ``features_only``: timm knows each architecture's stages.

timm's ``feature_info`` lists an architecture's feature maps from stride 2 (index 0) to stride 32
(index 4); a medad teacher returns indices 1 … ``num_stages`` (strides 4, 8, 16(, 32)).  ImageNet
weights are loaded strictly into the *full* timm model first, so a checkpoint that does not fit
the architecture is an error, and only then is the model cut down to the stages it returns.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from timm.models._features import FeatureGetterNet
from torch import nn

from medad.backbones.base import FeatureStage, Teacher


class TimmTeacher(Teacher):
    """A frozen timm model returning its feature maps at strides 4, 8, 16(, 32).

    ``weights(network)`` gives the ``state_dict`` to load into the full timm model (None: random weights).
    """

    def __init__(self, name: str, timm_name: str, *, mean: tuple[float, float, float],
                 std: tuple[float, float, float], num_stages: int = 3,
                 weights: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None) -> None:
        super().__init__(mean=mean, std=std)
        self.name = name
        network = timm.create_model(timm_name, pretrained=False)
        if weights is not None:
            try:
                network.load_state_dict(weights(network), strict=True)
            except RuntimeError as error:
                detail = " ".join(str(error).split())[:300]
                raise ValueError(f"the weights given for teacher {name} do not fit timm's {timm_name}: {detail}") from error
        self.body = FeatureGetterNet(network, out_indices=tuple(range(1, num_stages + 1)), prune=True)
        info = self.body.feature_info
        self.feature_info = [FeatureStage(channels, stride)
                             for channels, stride in zip(info.channels(), info.reduction(), strict=True)]
        self.freeze()

    def extract(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(normalised))
