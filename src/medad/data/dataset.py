"""``torch`` dataset of samples resized to a model's input size.

Each item is a dict:

* ``image`` — ``float32`` ``3×S×S`` in ``[0, 1]`` (bilinear resize with antialias; the aspect
  ratio is **not** preserved: every image is stretched to ``S×S``, as RD4AD/PDD do);
* ``mask`` — ``float32`` ``1×S×S`` in ``{0, 1}`` (nearest-exact resize; zeros when the sample
  has no mask);
* ``label`` — ``int`` (0 normal, 1 abnormal); ``index`` — position in ``samples``.

``cache=True`` (or a dict to share between datasets) keeps decoded + resized tensors in memory:
the benchmarks read small sets many times.  The key is ``(path, slice_index, mask_path, S)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .tasks import Sample, load_sample_image, load_sample_mask

__all__ = ["SampleDataset", "resize_image", "resize_mask"]


def resize_image(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``C×H×W`` → ``C×S×S`` bilinear with antialias, clamped to ``[0, 1]``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(img.shape[-2:]) == hw:
        return img
    out = F.interpolate(img.unsqueeze(0), size=hw, mode="bilinear", align_corners=False,
                        antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``1×H×W`` → ``1×S×S`` nearest-exact (values stay in {0, 1})."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(mask.shape[-2:]) == hw:
        return mask
    return F.interpolate(mask.unsqueeze(0), size=hw, mode="nearest-exact")[0]


class SampleDataset(Dataset):
    """Samples → dicts of resized image, mask, label, index (module doc)."""

    def __init__(self, samples: Sequence[Sample], image_size: int, *,
                 cache: bool | dict = False):
        if int(image_size) < 1:
            raise ValueError(f"image_size must be ≥ 1, got {image_size}")
        self.samples = list(samples)
        self.image_size = int(image_size)
        if cache is True:
            self.cache: dict | None = {}
        elif cache is False or cache is None:
            self.cache = None
        else:
            self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def _load(self, s: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        img = load_sample_image(s)
        mask = load_sample_mask(s)
        if mask is None:
            mask_r = torch.zeros(1, self.image_size, self.image_size)
        else:
            if tuple(mask.shape[-2:]) != tuple(img.shape[-2:]):
                raise ValueError(
                    f"{s.mask_path}: mask size {tuple(mask.shape[-2:])} differs from image "
                    f"{s.path} size {tuple(img.shape[-2:])}; masks must match their images")
            mask_r = resize_mask(mask, self.image_size)
        return resize_image(img, self.image_size), mask_r

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        if self.cache is not None:
            key = (str(s.path), s.slice_index, str(s.mask_path), self.image_size)
            hit = self.cache.get(key)
            if hit is None:
                hit = self._load(s)
                self.cache[key] = hit
            img, mask = hit
            img, mask = img.clone(), mask.clone()
        else:
            img, mask = self._load(s)
        return {"image": img, "mask": mask, "label": s.label, "index": index}
