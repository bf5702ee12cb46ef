"""Load a list of samples into one image tensor (and masks) at the model's input size."""

from __future__ import annotations

import torch

from medad.console import progress
from medad.data.dataset import SampleDataset
from medad.data.tasks import Sample


def load_images(samples: list[Sample], image_size: int, desc: str = "loading images") -> tuple[torch.Tensor, torch.Tensor]:
    """N×3×S×S images in [0, 1] and N×1×S×S masks (zeros where a sample has none)."""
    if not samples:
        raise ValueError("no images to load: the sample list is empty")
    dataset = SampleDataset(samples, image_size)
    images, masks = [], []
    for index in progress(range(len(dataset)), desc=desc, leave=False, unit="img"):
        item = dataset[index]
        images.append(item["image"])
        masks.append(item["mask"])
    return torch.stack(images), torch.stack(masks)
