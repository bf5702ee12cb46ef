"""Training-free K-shot scoring (medad.models.support_scoring): PatchCore-K and the candidate options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medad.backbones import build_teacher
from medad.models.patchcore import PatchCoreKShot
from medad.models.support_scoring import (QueryEncoding, SupportBank, SupportScoring, SupportScoringConfig,
                                          augment_supports, channel_statistics, expected_normal_map,
                                          locally_aware_features, nearest_distance)
from medad.scoring import DEFAULT_SIGMA, smooth_maps

CANDIDATES = [SupportScoringConfig(),
              SupportScoringConfig(augment="flip"),
              SupportScoringConfig(augment="flip+rotate", global_weight=0.5),
              SupportScoringConfig(global_weight=1.0, score="top1"),
              SupportScoringConfig(standardize=1.0),
              SupportScoringConfig(augment="flip", global_weight=0.25, standardize=0.5),
              SupportScoringConfig(positional=0.25),
              SupportScoringConfig(augment="flip+rotate", global_weight=0.25, score="top1", positional=0.1)]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher("efficientnet_lite0").eval()


def _images(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(n, 3, 64, 64)
    return (0.6 * base + 0.4 * torch.rand(n, 3, 64, 64, generator=g)).clamp(0, 1)


def _brute_force_patchcore(teacher, supports: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """PatchCore-K written out with ``torch.cdist`` over every query patch and every support patch."""
    with torch.no_grad():
        bank = locally_aware_features(teacher(supports))
        query = locally_aware_features(teacher(queries))
    bank = bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
    batch, dim, height, width = query.shape
    distances = torch.cdist(query.permute(0, 2, 3, 1).reshape(-1, dim), bank).amin(dim=1)
    maps = F.interpolate(distances.view(batch, 1, height, width), size=queries.shape[-2:], mode="bilinear",
                         align_corners=False)[:, 0]
    maps = smooth_maps(maps, DEFAULT_SIGMA)
    return maps, maps.flatten(1).amax(dim=1)


@pytest.mark.parametrize("scorer", ["support_scoring", "patchcore_k_shot"])
def test_default_config_is_patchcore_k(teacher, scorer):
    supports, queries = _images(0, 3), _images(1, 4)
    ours = SupportScoring(teacher) if scorer == "support_scoring" else PatchCoreKShot(teacher)
    maps, scores = ours.predict(queries, ours.prepare_supports(supports))
    ref_maps, ref_scores = _brute_force_patchcore(teacher, supports, queries)
    assert torch.allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert torch.allclose(maps, ref_maps, rtol=1e-4, atol=1e-4)
    assert SupportScoringConfig().name == SupportScoringConfig().method == "patchcore"
    assert SupportScoringConfig(augment="flip").method == "patchcore_plus"


def test_bank_round_trips_through_tensors(teacher):
    for config in (SupportScoringConfig(augment="flip", global_weight=0.5), SupportScoringConfig(standardize=1.0),
                   SupportScoringConfig(global_weight=0.5, positional=0.25)):
        scorer = SupportScoring(teacher, config)
        bank = scorer.prepare_supports(_images(8, 3))
        again = SupportBank.from_tensors(bank.to_tensors())
        queries = _images(9, 2)
        assert torch.equal(scorer.predict(queries, bank)[1], scorer.predict(queries, again)[1])


def test_standardize_measures_distances_in_the_supports_channel_spreads():
    """The bank holds the support patches standardised by their own per-channel mean and spread, and a query is
    standardised the same way: a support patch is at distance 0, and a shift of one spread along a channel that
    barely varies counts as much as one along a channel that varies a thousand times more."""
    g = torch.Generator().manual_seed(0)
    widths = torch.tensor([1e-3, 1.0, 1.0])
    patches = torch.randn(2, 3, 4, 4, generator=g) * widths.view(1, 3, 1, 1)
    views = QueryEncoding(patches, torch.nn.functional.normalize(torch.randn(2, 5, generator=g), dim=1), (4, 4))
    bank = SupportScoring(None, SupportScoringConfig(standardize=1.0, sigma=0.5)).bank_from_views(views, 2)
    flat = patches.permute(0, 2, 3, 1).reshape(-1, 3)
    center, spread = channel_statistics(flat)
    assert torch.allclose(bank.center, flat.mean(0)) and torch.allclose(bank.patches, (flat - center) / spread)
    assert nearest_distance(bank.standardized(flat[:1]), bank.patches).item() < 1e-3
    isolated = bank.standardized(flat[:1] + 50 * spread * torch.tensor([1.0, 0.0, 0.0]))
    other = bank.standardized(flat[:1] + 50 * spread * torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(nearest_distance(isolated, bank.patches), nearest_distance(other, bank.patches), rtol=0.1)
    # a strength between 0 (one spread for every channel) and 1 interpolates geometrically
    uniform, half = channel_statistics(flat, 0.0)[1], channel_statistics(flat, 0.5)[1]
    assert torch.allclose(uniform, uniform[:1].expand(3)) and torch.allclose(half, (spread * uniform).sqrt())


@pytest.mark.parametrize("block", [1, 7, 50, 10 ** 9])
def test_nearest_distance_in_blocks_equals_the_nearest_of_all_distances(block):
    generator = torch.Generator().manual_seed(0)
    points, bank = torch.randn(23, 5, generator=generator), torch.randn(11, 5, generator=generator)
    expected = torch.cdist(points, bank).amin(dim=1)
    assert torch.allclose(nearest_distance(points, bank, block=block), expected, atol=1e-5)
    assert nearest_distance(points[:0], bank, block=block).shape == (0,)


def test_positional_weighs_a_difference_by_how_much_the_supports_differ_there():
    """Supports that differ among themselves in the left half and agree in the right: the same query deviation
    scores equally in both halves of the plain map, but lower on the left than on the right with ``positional``,
    and the map is divided by the smoothed leave-one-out maps plus the floor times their mean."""
    g = torch.Generator().manual_seed(0)
    patches = torch.zeros(3, 4, 16, 16)
    patches[:, 1:, :, :8] = 3 * torch.randn(3, 3, 16, 8, generator=g)
    views = QueryEncoding(patches, torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=1), (32, 32))
    query = patches[:1].clone()
    query[0, 0, 8, 3] += 10.0
    query[0, 0, 8, 12] += 10.0
    encoded = QueryEncoding(query, views.pooled[:1], (32, 32))
    plain_scorer = SupportScoring(None, SupportScoringConfig(sigma=0.5))
    positional_scorer = SupportScoring(None, SupportScoringConfig(sigma=0.5, positional=0.25))
    plain = plain_scorer.raw_maps(encoded, plain_scorer.bank_from_views(views, 3))[0]
    bank = positional_scorer.bank_from_views(views, 3)
    weighted = positional_scorer.raw_maps(encoded, bank)[0]
    left, right = (slice(14, 20), slice(4, 10)), (slice(14, 20), slice(22, 28))
    assert torch.allclose(plain[left].max(), plain[right].max(), rtol=1e-3)
    assert weighted[left].max() < 0.5 * weighted[right].max()
    assert bank.patch_scale == 1.0 and bank.position_scale.shape == (32, 32)
    assert torch.allclose(weighted, plain / bank.position_scale)
    loo = torch.stack([plain_scorer.raw_maps(views[slice(i, i + 1)], plain_scorer.bank_from_views(
        views[[j for j in range(3) if j != i]], 2))[0] for i in range(3)])
    assert torch.allclose(bank.position_scale, expected_normal_map(loo, 0.25), rtol=1e-4, atol=1e-5)
    assert torch.allclose(expected_normal_map(loo, 0.25) - expected_normal_map(loo, 0.0),
                          0.25 * expected_normal_map(loo, 0.0).mean().expand(32, 32), atol=1e-5)


def test_combined_score_is_in_leave_one_out_units(teacher):
    """With the whole-image term both terms are divided by the supports' leave-one-out means, so a support's
    own other views score near the bottom of that scale and a foreign image above 1."""
    scorer = SupportScoring(teacher, SupportScoringConfig(global_weight=1.0))
    bank = scorer.prepare_supports(_images(10, 4))
    checker = ((torch.arange(64).view(1, 64) // 8 + torch.arange(64).view(64, 1) // 8) % 2).float()
    foreign = scorer.encode(checker.expand(1, 3, 64, 64).contiguous())
    maps, patch, glob = scorer.score_terms(foreign, bank)
    assert patch.item() > 1.0 and glob.item() > 1.0
    assert torch.allclose(scorer.score_encoded(foreign, bank)[1], patch + glob)


@pytest.mark.parametrize("config", CANDIDATES, ids=lambda c: c.name)
def test_every_candidate_uses_the_supports(teacher, config):
    """A scorer that ignored its K references would score identically with other supports."""
    scorer = SupportScoring(teacher, config)
    queries = _images(1, 4)
    a = scorer.predict(queries, scorer.prepare_supports(_images(2, 2)))[1]
    b = scorer.predict(queries, scorer.prepare_supports(_images(3, 2)))[1]
    assert torch.isfinite(a).all() and not torch.allclose(a, b, rtol=1e-3)


@pytest.mark.parametrize("config", CANDIDATES, ids=lambda c: c.name)
def test_shared_plain_maps_give_each_candidates_own_scores(teacher, config):
    """A candidate scored from the plain maps of its views and standardisation (``bank.positioned`` of them) gets
    exactly the scores it computes alone: what lets a benchmark compute the maps once for several candidates."""
    scorer = SupportScoring(teacher, config)
    views = scorer.encode(augment_supports(_images(12, 3), config.augment))
    bank = scorer.bank_from_views(views, 3)
    plain = SupportScoring(teacher, SupportScoringConfig(augment=config.augment, standardize=config.standardize))
    queries = scorer.encode(_images(13, 4))
    shared = plain.raw_maps(queries, plain.bank_from_views(views, 3))
    alone_maps, alone = scorer.score_encoded(queries, bank)
    maps, scores = scorer.score_encoded(queries, bank, bank.positioned(shared))
    assert torch.allclose(scores, alone, atol=1e-6) and torch.allclose(maps, alone_maps, atol=1e-6)


def test_a_support_scores_lower_than_a_foreign_image(teacher):
    scorer = SupportScoring(teacher, SupportScoringConfig(augment="flip", global_weight=1.0))
    supports = _images(4, 3)
    foreign = 1 - _images(5, 1)
    scores = scorer.predict(torch.cat([supports[:1], foreign]), scorer.prepare_supports(supports))[1]
    assert scores[0] < scores[1]


def test_augmented_views_and_bank_size(teacher):
    images = _images(6, 2)
    views = augment_supports(images, "flip+rotate")
    assert views.shape == (8, 3, 64, 64)
    assert torch.equal(views[:2], images) and torch.equal(views[2:4], images.flip(-1))
    scorer = SupportScoring(teacher, SupportScoringConfig(augment="flip"))
    bank = scorer.prepare_supports(images)
    grid = scorer.encode(images[:1]).patches.shape
    assert bank.patches.shape == (4 * grid[2] * grid[3], grid[1]) and bank.pooled.shape[0] == 4


def test_single_support_has_unit_scales(teacher):
    bank = SupportScoring(teacher, SupportScoringConfig(global_weight=1.0, positional=0.5)).prepare_supports(
        _images(7, 1))
    assert bank.patch_scale == 1.0 and bank.global_scale == 1.0 and bank.position_scale is None


@pytest.mark.parametrize("bad", [{"augment": "mixup"}, {"score": "mean"}, {"global_weight": -1.0},
                                 {"global_weight": float("nan")}, {"standardize": 1.5}, {"standardize": float("nan")},
                                 {"positional": -0.1}, {"positional": float("nan")}])
def test_config_refuses_unknown_options(bad):
    with pytest.raises(ValueError):
        SupportScoringConfig(**bad)


def test_encode_cached_computes_once_then_reads_the_file(teacher, tmp_path):
    scorer = SupportScoring(teacher)
    calls = []

    def load(samples, size, desc):
        calls.append((samples, size, desc))
        return _images(11, len(samples)), None

    first = scorer.encode_cached(tmp_path / "c" / "q.pt", load, ["a", "b"], 64, desc="queries")
    again = scorer.encode_cached(tmp_path / "c" / "q.pt", load, ["a", "b"], 64, desc="queries")
    assert calls == [(["a", "b"], 64, "queries")]
    assert torch.equal(first.patches, again.patches) and torch.equal(first.pooled, again.pooled)
    assert again.image_size == first.image_size == (64, 64)
