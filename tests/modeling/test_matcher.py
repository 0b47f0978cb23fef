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


def _reference_cost(matcher, pred_logits, pred_masks, labels, masks, generator):
    """The per-image cost as the matcher computed it before batching (kept verbatim as the reference)."""
    if labels.shape[0] == 0:
        return torch.zeros(pred_logits.shape[0], 0)
    probs = pred_logits.float().softmax(-1)
    cost_class = -probs[:, labels]
    points = torch.rand(1, matcher.num_points, 2, device=pred_masks.device, generator=generator)
    pred_points = point_sample(pred_masks[None].float(), points)[0]
    target_points = point_sample(masks[None].to(pred_points), points)[0]
    cost = (
        matcher.cost_class * cost_class
        + matcher.cost_mask * pairwise_sigmoid_ce_cost(pred_points, target_points)
        + matcher.cost_dice * pairwise_dice_cost(pred_points, target_points)
    )
    return cost.cpu()


def _reference_match(matcher, outputs, targets, generator):
    """The old loop: one cost matrix, one host copy and one assignment per image."""
    from scipy.optimize import linear_sum_assignment

    indices = []
    for image, target in enumerate(targets):
        cost = _reference_cost(
            matcher, outputs["pred_logits"][image], outputs["pred_masks"][image], target["labels"], target["masks"], generator
        )
        pred_idx, tgt_idx = linear_sum_assignment(cost.numpy())
        indices.append((torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64)))
    return indices


def _predictions_and_targets(seed: int, num_predictions: int = 4):
    """Noisy predictions (final and aux) of 3 images with 4, 0 and 6 (> Q) targets."""
    gen = torch.Generator().manual_seed(seed)
    num_queries, num_classes = 5, 4
    targets = []
    for count in (4, 0, 6):
        targets.append({
            "labels": torch.randint(0, num_classes, (count,), generator=gen),
            "masks": _blob_masks(count, 32, gen) if count else torch.zeros(0, 32, 32, dtype=torch.bool),
        })
    predictions = [
        {
            "pred_logits": torch.randn(3, num_queries, num_classes + 1, generator=gen) * 2,
            "pred_masks": torch.randn(3, num_queries, 8, 8, generator=gen) * 3,
        }
        for _ in range(num_predictions)
    ]
    return predictions, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_all_equals_the_per_image_loop_with_one_host_copy(seed):
    from tests.modeling.sync_counter import SyncCounter

    predictions, targets = _predictions_and_targets(seed)
    matcher = HungarianMatcher(num_points=50)
    with SyncCounter() as counter:
        batched = matcher.match_all(predictions, targets, generator=torch.Generator().manual_seed(seed))
    assert [name for name, _ in counter.calls] == ["cpu"]
    gen = torch.Generator().manual_seed(seed)
    expected = [_reference_match(matcher, prediction, targets, gen) for prediction in predictions]
    assert len(batched) == len(predictions)
    for got, want in zip(batched, expected):
        assert len(got) == len(targets)
        for (pred_a, tgt_a), (pred_b, tgt_b) in zip(got, want):
            assert pred_a.dtype == tgt_a.dtype == torch.int64
            assert torch.equal(pred_a, pred_b) and torch.equal(tgt_a, tgt_b)
    assert [len(p) for p, _ in batched[0]] == [4, 0, 5]  # min(Q, T_i)
    # The predictions differ, so equal results are not an accident of identical inputs.
    assert len({tuple(pairs[0][0].tolist()) + tuple(pairs[2][0].tolist()) for pairs in batched}) > 1
    # forward is the one-prediction case and draws the same points as the reference.
    single = matcher(predictions[0], targets, generator=torch.Generator().manual_seed(seed))
    reference = _reference_match(matcher, predictions[0], targets, torch.Generator().manual_seed(seed))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(single, reference))


def test_match_all_names_the_prediction_with_nan_costs():
    predictions, targets = _predictions_and_targets(3, num_predictions=3)
    predictions[2]["pred_masks"][2, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"image 2 \(prediction 2\) has NaN"):
        HungarianMatcher(num_points=50).match_all(predictions, targets)


def test_match_all_without_any_target_copies_nothing():
    from tests.modeling.sync_counter import SyncCounter

    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}
    predictions = [{"pred_logits": torch.randn(2, 5, 3), "pred_masks": torch.randn(2, 5, 8, 8)}] * 2
    with SyncCounter() as counter:
        indices = HungarianMatcher(num_points=16).match_all(predictions, [empty, empty])
    assert counter.calls == []
    assert [[p.numel() for p, _ in per_image] for per_image in indices] == [[0, 0], [0, 0]]
