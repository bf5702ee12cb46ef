"""Matching query features to K normal support images without assuming registration.

Medical images of one task are not aligned (head CTs differ in size and position,
chest films in framing), so a query location is compared with *every* location of
each support image (nearest neighbour), not with the same location.  The per-support
distances are then combined with query-conditioned weights: a softmax over the K
supports of the negative distances divided by a temperature, per query location, so
the support that best explains a location dominates there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: query rows matched at once (bounds the B×HW×K·HW similarity matrix)
_CHUNK_ELEMENTS = 2**25


def nearest_support_distances(queries: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
    """B×C×H×W queries, K×C×h×w supports → B×K×H×W cosine distance to the nearest location of each support."""
    if queries.shape[1] != supports.shape[1]:
        raise ValueError(f"query features have {queries.shape[1]} channels but supports have {supports.shape[1]}")
    batch, channels, height, width = queries.shape
    k = supports.shape[0]
    keys = F.normalize(supports.flatten(2), dim=1).permute(1, 0, 2).reshape(channels, -1)  # C × K·hw
    rows = F.normalize(queries.flatten(2), dim=1).transpose(1, 2).reshape(-1, channels)  # B·HW × C
    chunk = max(1, _CHUNK_ELEMENTS // keys.shape[1])
    parts = (rows,) if torch.jit.is_tracing() else rows.split(chunk)  # an exported graph's batch is dynamic
    nearest = torch.cat([(part @ keys).unflatten(1, (k, -1)).amax(dim=2) for part in parts])
    return (1.0 - nearest).view(batch, height * width, k).transpose(1, 2).reshape(batch, k, height, width)


def weighted_support_distance(distances: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B×K×H×W distances → (B×H×W distance map, B×K×H×W query-conditioned support weights).

    ``temperature`` → 0 gives the minimum over supports; large values give their mean.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    weights = torch.softmax(-distances / temperature, dim=1)
    return (weights * distances).sum(dim=1), weights


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Mean cosine between the channel vectors of *different* images at the same location (N ≥ 2).

    ≈ 1 means the feature map no longer depends on the image (a collapsed student).
    """
    if features.shape[0] < 2:
        raise ValueError("the inter-image cosine needs at least 2 images")
    unit = F.normalize(features.flatten(2), dim=1)  # N × C × L
    n = unit.shape[0]
    gram = torch.einsum("acl,bcl->abl", unit, unit).mean(dim=2)  # N × N, mean over locations
    off_diagonal = gram.sum() - gram.diagonal().sum()
    return float(off_diagonal / (n * (n - 1)))
