"""Training-free K-shot scoring on a frozen teacher: PatchCore-K and the options the development pool chose from.

The baseline (``SupportScoring()``, all options off) is PatchCore-K: the teacher's locally aware patch
features of its two deepest stages, the distance of each query patch to its nearest support patch, the map
smoothed, the image score its maximum.  The options, each of which uses the supports:

* ``augment``: the support bank also holds the supports' horizontal flips (``"flip"``) and, with
  ``"flip+rotate"``, their rotations by ±``ROTATION`` degrees; more views of K normals cover more of the
  target's normal variation (pose, laterality) at no labelling cost;
* ``global_weight``: the image score adds the distance of the query's pooled deepest-stage feature to its
  nearest support (a whole-image cue, for changes that are global rather than local), each term divided by
  its mean over the supports scored leave-one-out, so the two are in the same units whatever the task;
* ``score``: ``"max"`` of the map, or ``"top1"``: the mean of its highest 1 % of pixels;
* ``standardize``: the strength α ∈ [0, 1] of a per-channel standardisation of the patch features by the support
  bank's patches before the nearest-neighbour search: centred, and divided by ``std**α · mean(std)**(1-α)`` (α = 1
  is a diagonal Mahalanobis distance, where channels that vary little among the K normals weigh more; α = 0 is
  off);
* ``positional``: the floor β of a per-position normalisation of the map: it is divided by the map a normal image is
  expected to have there (the supports' leave-one-out maps, averaged and smoothed with σ = image size /
  ``POSITION_SIGMA_DIVISOR``) plus β times that map's mean (0 is off).  Where the supports differ among themselves
  at every position (image borders, text markers, the edge of the skull), a query's difference counts less; where
  they agree, more.  It needs K ≥ 2 (with one support it is off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from medad.backbones.base import Teacher
from medad.io_utils import atomic_path
from medad.scoring import DEFAULT_SIGMA, smooth_maps

__all__ = ["PLUS_METHOD", "locally_aware_features", "SupportScoringConfig", "SupportScoring", "QueryEncoding",
           "SupportBank", "augment_supports", "channel_statistics", "reduce_map", "global_distance",
           "nearest_distance", "squared_distances", "flatten_patches", "expected_normal_map", "ROTATION",
           "POSITION_SIGMA_DIVISOR"]

#: the method name of a scorer with options (``patchcore`` is the baseline's)
PLUS_METHOD = "patchcore_plus"
#: degrees of the rotated support views of ``augment="flip+rotate"``
ROTATION = 10.0
#: the expected normal map of ``positional`` is smoothed with σ = image size / this
POSITION_SIGMA_DIVISOR = 16
_SCORES = ("max", "top1")
_AUGMENTS = ("none", "flip", "flip+rotate")


@dataclass(frozen=True)
class SupportScoringConfig:
    """Options of :class:`SupportScoring`; the defaults are PatchCore-K."""

    augment: str = "none"
    global_weight: float = 0.0
    score: str = "max"
    standardize: float = 0.0
    positional: float = 0.0
    sigma: float = DEFAULT_SIGMA

    def __post_init__(self) -> None:
        if self.augment not in _AUGMENTS:
            raise ValueError(f"augment must be one of {_AUGMENTS}, not {self.augment!r}")
        if self.score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, not {self.score!r}")
        if not self.global_weight >= 0.0:
            raise ValueError(f"global_weight must be ≥ 0, not {self.global_weight!r}")
        if not 0.0 <= self.standardize <= 1.0:
            raise ValueError(f"standardize must be in [0, 1], not {self.standardize!r}")
        if not self.positional >= 0.0:
            raise ValueError(f"positional must be ≥ 0, not {self.positional!r}")

    @property
    def name(self) -> str:
        """``patchcore`` for the baseline, else ``patchcore[option,...]``."""
        parts = [f"aug={self.augment}"] if self.augment != "none" else []
        parts += [f"global={self.global_weight:g}"] if self.global_weight else []
        parts += [f"score={self.score}"] if self.score != "max" else []
        parts += [f"std={self.standardize:g}"] if self.standardize else []
        parts += [f"pos={self.positional:g}"] if self.positional else []
        return "patchcore" + (f"[{','.join(parts)}]" if parts else "")

    @property
    def method(self) -> str:
        """``patchcore`` (PatchCore-K, every option off) or :data:`PLUS_METHOD`."""
        return "patchcore" if self == SupportScoringConfig(sigma=self.sigma) else PLUS_METHOD

    def as_dict(self) -> dict:
        return asdict(self)


def locally_aware_features(teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """PatchCore's locally aware patch features ``B×D×h×w``: the two deepest stages, each averaged over 3×3, the
    deeper one upsampled to the other's grid, concatenated."""
    pooled = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in teacher_features[-2:]]
    grid = pooled[0].shape[-2:]
    pooled[1] = F.interpolate(pooled[1], size=grid, mode="bilinear", align_corners=False)
    return torch.cat(pooled, dim=1)


@dataclass
class QueryEncoding:
    """What scoring needs of query images: patch features ``B×D×h×w``, pooled features ``B×C``, image size."""

    patches: torch.Tensor
    pooled: torch.Tensor
    image_size: tuple[int, int]

    def __getitem__(self, rows) -> QueryEncoding:
        return QueryEncoding(self.patches[rows], self.pooled[rows], self.image_size)

    def __len__(self) -> int:
        return self.patches.shape[0]

    @classmethod
    def concat(cls, parts: list[QueryEncoding]) -> QueryEncoding:
        return cls(torch.cat([p.patches for p in parts]), torch.cat([p.pooled for p in parts]), parts[0].image_size)


@dataclass
class SupportBank:
    """The supports' patch bank ``P×D``, pooled features ``V×C`` and leave-one-out score scales; with
    ``standardize``, the per-channel ``center`` and ``spread`` the bank (and every query) is standardised by; with
    ``positional``, the ``S×S`` map every query's map is divided by (``position_scale``)."""

    patches: torch.Tensor
    pooled: torch.Tensor
    patch_scale: float
    global_scale: float
    center: torch.Tensor | None = None
    spread: torch.Tensor | None = None
    position_scale: torch.Tensor | None = None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The bank as named tensors (the support cache, exported graphs)."""
        tensors = {"patches": self.patches.contiguous(), "pooled": self.pooled.contiguous(),
                   "scales": torch.tensor([self.patch_scale, self.global_scale])}
        if self.center is not None:
            tensors.update(center=self.center.contiguous(), spread=self.spread.contiguous())
        if self.position_scale is not None:
            tensors.update(position_scale=self.position_scale.contiguous())
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SupportBank:
        scales = tensors["scales"]
        return cls(tensors["patches"], tensors["pooled"], scales[0], scales[1], tensors.get("center"),
                   tensors.get("spread"), tensors.get("position_scale"))

    def standardized(self, patches: torch.Tensor) -> torch.Tensor:
        """Rows ``N×D`` of patch features in the bank's units (unchanged without standardisation)."""
        return patches if self.center is None else (patches - self.center) / self.spread

    def positioned(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps ``B×S×S`` divided by the expected normal map (unchanged without ``positional``)."""
        return maps if self.position_scale is None else maps / self.position_scale


def augment_supports(images: torch.Tensor, augment: str) -> torch.Tensor:
    """The support images plus their augmented views (``augment`` as in the module doc)."""
    if augment == "none":
        return images
    views = [images, TF.hflip(images)]
    if augment == "flip+rotate":
        views += [TF.rotate(images, angle, interpolation=TF.InterpolationMode.BILINEAR)
                  for angle in (-ROTATION, ROTATION)]
    return torch.cat(views)


class SupportScoring:
    """Training-free K-shot anomaly scoring against a bank of normal support images."""

    method = "patchcore"

    def __init__(self, teacher: Teacher, config: SupportScoringConfig | None = None) -> None:
        self.teacher = teacher
        self.config = config or SupportScoringConfig()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 32) -> QueryEncoding:
        """Teacher features of images, computed in batches."""
        size = tuple(images.shape[-2:])
        return QueryEncoding.concat([self.encoding_from_teacher(self.teacher(images[start:start + batch_size]), size)
                                     for start in range(0, len(images), batch_size)])

    def encode_cached(self, path: Path, load_images: Callable[..., tuple[torch.Tensor, torch.Tensor]], samples: list,
                      image_size: int, desc: str) -> QueryEncoding:
        """The encoding of ``samples`` at ``image_size`` px saved at ``path`` (a benchmark's feature cache), else
        computed from ``load_images(samples, image_size, desc=desc)`` (``medad.data.images.load_images``) and saved."""
        if path.is_file():
            saved = torch.load(path)
            return QueryEncoding(saved["patches"], saved["pooled"], (image_size, image_size))
        images, _ = load_images(samples, image_size, desc=desc)
        encoded = self.encode(images)
        with atomic_path(path) as tmp:
            torch.save({"patches": encoded.patches, "pooled": encoded.pooled}, tmp)
        return encoded

    @staticmethod
    def encoding_from_teacher(teacher_features: list[torch.Tensor], image_size: tuple[int, int]) -> QueryEncoding:
        """The encoding from teacher features already computed."""
        return QueryEncoding(locally_aware_features(teacher_features),
                             F.normalize(teacher_features[-1].mean(dim=(2, 3)), dim=1), image_size)

    @torch.no_grad()
    def prepare_supports(self, support_images: torch.Tensor) -> SupportBank:
        """The bank of the supports (and their views), with leave-one-out scales of both score terms (and the
        expected normal map of ``positional``)."""
        views = augment_supports(support_images, self.config.augment)
        return self.bank_from_views(self.encode(views), len(support_images))

    @torch.no_grad()
    def bank_from_views(self, encoded: QueryEncoding, k: int) -> SupportBank:
        """A bank from the encoded support views (the K originals first, then each view of all K in turn)."""
        n_views = len(encoded.pooled) // k
        owner = torch.arange(k).repeat(n_views)
        patches = flatten_patches(encoded.patches)
        center = spread = None
        if self.config.standardize:
            center, spread = channel_statistics(patches, self.config.standardize)
            patches = (patches - center) / spread
        per_view = encoded.patches.shape[2] * encoded.patches.shape[3]
        patch_owner = owner.repeat_interleave(per_view)
        patch_scale = global_scale = 1.0
        position_scale = None
        if k > 1:
            loo_maps, loo_global = [], []
            for i in range(k):
                others = owner != i
                bank = SupportBank(patches[patch_owner != i], encoded.pooled[others], 1.0, 1.0, center, spread)
                loo_maps.append(self.raw_maps(encoded[slice(i, i + 1)], bank))
                loo_global.append(global_distance(encoded[slice(i, i + 1)], bank))
            loo_maps = torch.cat(loo_maps)
            global_scale = max(float(torch.cat(loo_global).mean()), 1e-6)
            if self.config.positional:
                position_scale = expected_normal_map(loo_maps, self.config.positional)
            else:
                patch_scale = max(float(reduce_map(loo_maps, self.config.score).mean()), 1e-6)
        return SupportBank(patches, encoded.pooled, patch_scale, global_scale, center, spread, position_scale)

    def raw_maps(self, queries: QueryEncoding, bank: SupportBank) -> torch.Tensor:
        """Smoothed nearest-neighbour distance maps ``B×H×W`` (not yet in leave-one-out units; with ``positional``,
        divided by the expected normal map, which puts them in the supports' units)."""
        return bank.positioned(nearest_patch_maps(queries.patches, bank.patches, queries.image_size,
                                                  self.config.sigma, bank.standardized))

    @torch.no_grad()
    def score_terms(self, queries: QueryEncoding, bank: SupportBank, maps: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Maps ``B×H×W``, the patch term and the whole-image term ``B``, each in leave-one-out units (``maps``: the
        queries' :meth:`raw_maps` against ``bank``, when already computed)."""
        maps = self.raw_maps(queries, bank) if maps is None else maps
        patch, glob = reduce_map(maps, self.config.score), global_distance(queries, bank)
        return maps / bank.patch_scale, patch / bank.patch_scale, glob / bank.global_scale

    @torch.no_grad()
    def score_encoded(self, queries: QueryEncoding, bank: SupportBank, maps: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``B×H×W`` and image scores ``B`` of encoded queries.

        Without the whole-image term they are PatchCore-K's raw distances; with it, both terms are in the units of
        the supports' leave-one-out scores, so that they can be added.  ``maps``: the queries' :meth:`raw_maps`
        against ``bank``, when already computed (configurations that differ only in the image score, the positional
        floor or the whole-image weight share them: ``bank.positioned`` of the plain maps).
        """
        maps = self.raw_maps(queries, bank) if maps is None else maps
        if not self.config.global_weight:
            return maps, reduce_map(maps, self.config.score)
        maps, patch, glob = self.score_terms(queries, bank, maps)
        return maps, patch + self.config.global_weight * glob

    @torch.no_grad()
    def predict(self, images: torch.Tensor, bank: SupportBank) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and scores of images against a prepared bank."""
        return self.score_encoded(self.encode(images), bank)


def channel_statistics(patches: torch.Tensor, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and spread of patch features ``P×D``: ``std**strength · mean(std)**(1 - strength)``, the
    standard deviation raised by 0.1 % of its mean over channels so that a channel constant over the supports does
    not divide by zero."""
    std = patches.std(dim=0)
    typical = std.mean()
    return patches.mean(dim=0), (std + 1e-3 * typical) ** strength * typical ** (1.0 - strength)


#: entries of the distance matrix :func:`nearest_distance` holds at once (64 MiB of float32)
DISTANCE_BLOCK = 2 ** 24


def squared_distances(points: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``N×P`` between the rows of ``points`` (N×D) and of ``bank`` (P×D), as one matrix
    product (much faster on the CPU than a batched ``cdist``; may be slightly negative from rounding)."""
    return (points * points).sum(1, keepdim=True) - 2 * points @ bank.T + (bank * bank).sum(1)


def nearest_distance(points: torch.Tensor, bank: torch.Tensor, block: int = DISTANCE_BLOCK) -> torch.Tensor:
    """Euclidean distance of each row of ``points`` (N×D) to its nearest row of ``bank`` (P×D), computed for as many
    rows at a time as keep the distance matrix within ``block`` entries (N×P grows fast: 100 queries at 224 px
    against 8 supports' views are 4·10⁹ entries)."""
    rows = max(1, block // max(1, len(bank)))
    if len(points) <= rows:  # one block: no split (an exported graph would fix the split sizes it was traced with)
        return squared_distances(points, bank).amin(dim=1).clamp_min(0).sqrt()
    nearest = [squared_distances(part, bank).amin(dim=1) for part in points.split(rows)]
    return torch.cat(nearest).clamp_min(0).sqrt()


def expected_normal_map(loo_maps: torch.Tensor, floor: float) -> torch.Tensor:
    """The divisor ``S×S`` of ``positional``: the supports' leave-one-out maps ``K×S×S`` averaged and smoothed, plus
    ``floor`` times their mean (so that where the supports match each other exactly no division blows up)."""
    size = loo_maps.shape[-1]
    expected = smooth_maps(loo_maps.mean(dim=0, keepdim=True), size / POSITION_SIGMA_DIVISOR)[0]
    return expected + floor * expected.mean()


def reduce_map(maps: torch.Tensor, score: str) -> torch.Tensor:
    """Image scores of ``B×H×W`` maps: ``"max"``, or ``"top1"`` (the mean of the highest 1 % of pixels)."""
    flat = maps.flatten(1)
    if score == "max":
        return flat.amax(dim=1)
    return flat.topk(max(1, flat.shape[1] // 100), dim=1).values.mean(dim=1)


def global_distance(queries: QueryEncoding, bank: SupportBank) -> torch.Tensor:
    """Cosine distance of each query's pooled feature to its nearest support view."""
    return (1.0 - queries.pooled @ bank.pooled.T).amin(dim=1)


def nearest_patch_maps(patches: torch.Tensor, bank: torch.Tensor, image_size: tuple[int, int], sigma: float,
                       transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Maps ``B×H×W``: each query patch's (``B×D×h×w``) distance to its nearest bank row (``P×D``), upsampled to
    ``image_size`` and smoothed; ``transform`` maps the query rows into the bank's units first."""
    batch, _, height, width = patches.shape
    rows = flatten_patches(patches)
    distances = nearest_distance(rows if transform is None else transform(rows), bank)
    maps = F.interpolate(distances.view(batch, 1, height, width), size=image_size, mode="bilinear",
                         align_corners=False)[:, 0]
    return smooth_maps(maps, sigma)


def flatten_patches(patches: torch.Tensor) -> torch.Tensor:
    """Patch features ``B×D×h×w`` as rows ``(B·h·w)×D``."""
    return patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
