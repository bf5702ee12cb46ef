"""Teacher-feature cache: a frozen teacher's features are computed once per image.

Keys combine the image content (the exact input tensor after resizing), the
teacher (name + a fingerprint of its weights) and the input size, so a change
in any of them is a cache miss.  Entries live in memory and, with
``cache_dir``, in one safetensors file per image written atomically, so they
survive across runs and processes.  Training uses no augmentation, which is
what makes cached features exact (documented in docs/METHODS.md).

Entries are kept in host memory; :class:`FeatureBank` puts the stacked
features of a training set where the training steps read them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medad.backbones.base import Teacher
from medad.console import progress
from medad.io_utils import atomic_path


def teacher_fingerprint(teacher: Teacher) -> str:
    """Short hash of a teacher's name and weights."""
    digest = hashlib.sha1(teacher.name.encode())
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def image_key(image: torch.Tensor) -> str:
    """Content hash of one 3×H×W input tensor."""
    return hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class FeatureCache:
    """Memoises ``teacher(images)`` per image; optionally persisted under ``cache_dir``."""

    def __init__(self, teacher: Teacher, cache_dir: str | Path | None = None) -> None:
        self.teacher = teacher
        self.fingerprint = teacher_fingerprint(teacher)
        self.cache_dir = Path(cache_dir) / f"{teacher.name}-{self.fingerprint}" if cache_dir else None
        self.memory: dict[str, list[torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def _key(self, image: torch.Tensor) -> str:
        return f"{image.shape[-2]}x{image.shape[-1]}-{image_key(image)}"

    def _lookup(self, key: str) -> list[torch.Tensor] | None:
        if key in self.memory:
            return self.memory[key]
        if self.cache_dir is not None:
            path = self.cache_dir / f"{key}.safetensors"
            if path.is_file():
                tensors = load_file(path)
                features = [tensors[str(i)] for i in range(len(tensors))]
                self.memory[key] = features
                return features
        return None

    def _store(self, key: str, features: list[torch.Tensor]) -> None:
        self.memory[key] = features
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.cache_dir / f"{key}.safetensors") as tmp:
                save_file({str(i): f.contiguous() for i, f in enumerate(features)}, str(tmp))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features of a B×3×H×W batch, computing only the images not cached yet."""
        keys = [self._key(image) for image in images]
        found = [self._lookup(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = [stage.cpu() for stage in self.teacher(images[missing])]
            for row, index in enumerate(missing):
                entry = [stage[row].clone() for stage in computed]
                self._store(keys[index], entry)
                found[index] = entry
        return [torch.stack([entry[stage] for entry in found]) for stage in range(len(found[0]))]


@torch.no_grad()
def stack_features(cache: FeatureCache, images: torch.Tensor, batch_size: int = 32,
                   desc: str = "teacher features") -> list[torch.Tensor]:
    """Features of N images (N×3×H×W) as one N×C×h×w tensor per stage, in batches with a progress bar."""
    chunks: list[list[torch.Tensor]] = []
    for start in progress(range(0, len(images), batch_size), desc=desc, leave=False, unit="batch"):
        chunks.append(cache.features(images[start:start + batch_size]))
    return [torch.cat([chunk[stage] for chunk in chunks]) for stage in range(len(chunks[0]))]


def fits_on_device(stages: list[torch.Tensor], device: torch.device, memory_fraction: float = 0.5) -> bool:
    """Whether tensors fit in ``memory_fraction`` of a CUDA device's free memory (always true elsewhere)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(stage.numel() * stage.element_size() for stage in stages) <= memory_fraction * free


class FeatureBank:
    """Stacked teacher features of N images (one N×C×h×w tensor per stage), read by batches of row indices.

    On a CUDA device they are kept on the GPU when they fit in half its free memory; otherwise they stay in
    host memory and each batch is gathered into pinned memory and copied asynchronously.  On the CPU (and
    MPS, whose memory is shared) they simply live on the device.
    """

    def __init__(self, stages: list[torch.Tensor], device: torch.device) -> None:
        self.device = device
        self.on_device = fits_on_device(stages, device)
        self.stages = [stage.to(device) for stage in stages] if self.on_device else stages

    def __len__(self) -> int:
        return len(self.stages[0])

    def __getitem__(self, indices: torch.Tensor) -> list[torch.Tensor]:
        if self.on_device:
            return [stage[indices.to(self.device)] for stage in self.stages]
        batch = []
        for stage in self.stages:
            rows = torch.empty((len(indices), *stage.shape[1:]), dtype=stage.dtype, pin_memory=True)
            torch.index_select(stage, 0, indices, out=rows)
            batch.append(rows.to(self.device, non_blocking=True))
        return batch
