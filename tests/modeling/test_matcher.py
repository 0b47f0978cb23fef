"""Point sampling and Hungarian matching on crafted inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ecom2f.modeling.matcher import HungarianMatcher, pairwise_dice_cost, pairwise_sigmoid_ce_cost
from ecom2f.modeling.point_sampling import point_sample, uncertain_point_coords_with_randomness


def test_point_sample_hits_pixel_centres_exactly():
    values = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    rows = torch.tensor([0, 3, 2, 1])
    cols = torch.tensor([0, 4, 1, 3])
    centres = torch.stack([(cols + 0.5) / 5, (rows + 0.5) / 4], dim=-1)  # (x, y)
    coords = centres[None].expand(2, -1, -1)
    sampled = point_sample(values, coords)
    assert sampled.shape == (2, 3, 4)
    torch.testing.assert_close(sampled, values[:, :, rows, cols], rtol=0, atol=1e-5)


def test_point_sample_interpolates_bilinearly_between_centres():
    grid = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # The image centre is equidistant from all four pixel centres.
    centre = point_sample(grid, torch.tensor([[[0.5, 0.5]]]))
    torch.testing.assert_close(centre, torch.tensor([[[15.0]]]))
    # Half-way between the two top pixel centres.
    top = point_sample(grid, torch.tensor([[[0.5, 0.25]]]))
    torch.testing.assert_close(top, torch.tensor([[[5.0]]]))


def test_point_sample_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"coords \[N, P, 2\]"):
        point_sample(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input \[N, C, H, W\]"):
        point_sample(torch.zeros(4, 4), torch.zeros(1, 3, 2))


def test_uncertain_points_come_from_the_undecided_region():
    # Left half undecided (logit 0), right half confident (|logit| 100).
    logits = torch.full((3, 1, 16, 16), 100.0)
    logits[..., :8] = 0.0
    logits[1, :, :, 8:] = -100.0
    gen = torch.Generator().manual_seed(0)
    coords = uncertain_point_coords_with_randomness(
        logits, num_points=100, oversample_ratio=10.0, importance_sample_ratio=1.0, generator=gen
    )
    assert coords.shape == (3, 100, 2)
    # Points with logit exactly 0 lie left of the last undecided pixel centre.
    assert (coords[..., 0] < 7.5 / 16).all()


def test_uncertain_points_mix_in_uniform_points():
    logits = torch.full((1, 1, 16, 16), 100.0)
    logits[..., :8] = 0.0
    gen = torch.Generator().manual_seed(1)
    coords = uncertain_point_coords_with_randomness(
        logits, num_points=400, oversample_ratio=3.0, importance_sample_ratio=0.75, generator=gen
    )
    assert coords.shape == (1, 400, 2)
    assert (coords[0, :300, 0] < 0.5).all()
    random_part = coords[0, 300:, 0]
    assert (random_part > 0.5).sum() > 20  # uniform points land on both halves
    assert ((coords >= 0) & (coords <= 1)).all()


def test_uncertain_points_validate_ratios():
    with pytest.raises(ValueError, match="oversample_ratio"):
        uncertain_point_coords_with_randomness(torch.zeros(1, 1, 4, 4), 10, 0.5, 0.5)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        uncertain_point_coords_with_randomness(torch.zeros(1, 1, 4, 4), 10, 2.0, 1.5)


def test_pairwise_costs_match_per_pair_losses():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 64, generator=gen) * 3
    targets = (torch.rand(3, 64, generator=gen) > 0.5).float()
    bce = pairwise_sigmoid_ce_cost(logits, targets)
    dice = pairwise_dice_cost(logits, targets)
    for q, t in itertools.product(range(5), range(3)):
        expected_bce = F.binary_cross_entropy_with_logits(logits[q], targets[t])
        p = logits[q].sigmoid()
        expected_dice = 1 - (2 * (p * targets[t]).sum() + 1) / (p.sum() + targets[t].sum() + 1)
        torch.testing.assert_close(bce[q, t], expected_bce, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dice[q, t], expected_dice, rtol=1e-5, atol=1e-6)


def _blob_masks(count: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``[count, size, size]`` bool rectangles at random places."""
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for i in range(count):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        h, w = torch.randint(size // 4, size // 2, (2,), generator=gen).tolist()
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def test_matcher_recovers_planted_permutation():
    gen = torch.Generator().manual_seed(3)
    num_queries, num_targets, num_classes = 7, 4, 5
    batch_targets, planted = [], []
    logits = torch.randn(2, num_queries, num_classes + 1, generator=gen)
    masks = torch.randn(2, num_queries, 16, 16, generator=gen)
    for image in range(2):
        labels = torch.randint(0, num_classes, (num_targets,), generator=gen)
        target_masks = _blob_masks(num_targets, 64, gen)
        queries = torch.randperm(num_queries, generator=gen)[:num_targets]
        for t, q in enumerate(queries.tolist()):
            logits[image, q, labels[t]] = 8.0
            small = F.interpolate(target_masks[t][None, None].float(), size=(16, 16), mode="area")[0, 0]
            masks[image, q] = 12.0 * (2 * small - 1)
        batch_targets.append({"labels": labels, "masks": target_masks})
        planted.append(dict(zip(queries.tolist(), range(num_targets))))
    matcher = HungarianMatcher(num_points=2000)
    indices = matcher({"pred_logits": logits, "pred_masks": masks}, batch_targets, generator=gen)
    for image, (pred_idx, tgt_idx) in enumerate(indices):
        assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64
        assert dict(zip(pred_idx.tolist(), tgt_idx.tolist())) == planted[image]


def test_matcher_class_cost_alone_follows_probabilities():
    # With only the class cost, the best assignment is the brute-force minimum of -p.
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 4, 4, generator=gen) * 2
    labels = torch.tensor([0, 2, 1])
    target = {"labels": labels, "masks": torch.zeros(3, 8, 8)}
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    (pred_idx, tgt_idx), = matcher({"pred_logits": logits, "pred_masks": torch.zeros(1, 4, 4, 4)}, [target])
    probs = logits[0].softmax(-1)
    best = min(
        itertools.permutations(range(4), 3),
        key=lambda queries: -sum(probs[q, labels[t]].item() for t, q in enumerate(queries)),
    )
    assert sorted(zip(tgt_idx.tolist(), pred_idx.tolist())) == list(enumerate(best))


def test_matcher_handles_image_without_targets():
    matcher = HungarianMatcher(num_points=32)
    outputs = {"pred_logits": torch.randn(1, 5, 3), "pred_masks": torch.randn(1, 5, 8, 8)}
    (pred_idx, tgt_idx), = matcher(outputs, [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}])
    assert pred_idx.numel() == 0 and tgt_idx.numel() == 0
    assert pred_idx.dtype == torch.int64


def test_matcher_rejects_wrong_target_count_and_nan():
    matcher = HungarianMatcher(num_points=32)
    outputs = {"pred_logits": torch.randn(2, 5, 3), "pred_masks": torch.randn(2, 5, 8, 8)}
    target = {"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 8)}
    with pytest.raises(ValueError, match="one per image"):
        matcher(outputs, [target])
    outputs["pred_logits"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        matcher(outputs, [target, target])


def test_cost_is_float32_inside_autocast():
    gen = torch.Generator().manual_seed(5)
    logits, masks = torch.randn(6, 4, generator=gen), torch.randn(6, 8, 8, generator=gen)
    labels, targets = torch.tensor([0, 2]), _blob_masks(2, 32, gen)
    matcher = HungarianMatcher(num_points=500)
    plain = matcher.cost_matrix(logits, masks, labels, targets, torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = matcher.cost_matrix(logits, masks, labels, targets, torch.Generator().manual_seed(6))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)
