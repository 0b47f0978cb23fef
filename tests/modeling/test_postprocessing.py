"""Mask2Former's inference rules on crafted inputs with hand-computed answers."""

from __future__ import annotations

import math

import torch

from ecom2f.modeling.postprocessing import (
    instance_inference,
    panoptic_inference,
    resize_masks_to_input,
    semantic_inference,
)

BIG = 20.0  # a logit that makes a probability ~1


def logits_for(classes: list[int], num_classes: int, strength: float = 10.0) -> torch.Tensor:
    """``[Q, K+1]`` with query q confidently in ``classes[q]`` (``num_classes`` = no object)."""
    out = torch.zeros(len(classes), num_classes + 1)
    for q, c in enumerate(classes):
        out[q, c] = strength
    return out


def test_panoptic_assigns_pixels_merges_stuff_and_drops_no_object():
    # 4 classes: 0, 1 are things; 2, 3 stuff. Queries: thing 0 (left), stuff 2 (top-right),
    # stuff 2 again (bottom-right), no-object, thing 1 with an empty mask.
    masks = torch.full((5, 4, 4), -BIG)
    masks[0, :, :2] = BIG
    masks[1, :2, 2:] = BIG
    masks[2, 2:, 2:] = BIG
    masks[3] = BIG
    cls = logits_for([0, 2, 2, 4, 1], 4)
    ids, segments = panoptic_inference(cls, masks, thing_ids=range(2), object_mask_threshold=0.8, overlap_threshold=0.8)
    assert segments == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": False, "category_id": 2},
    ]
    expected = torch.tensor([[1, 1, 2, 2]] * 4, dtype=torch.int32)
    assert torch.equal(ids, expected)


def test_panoptic_overlap_threshold_drops_mostly_covered_segments():
    # Query 1 (score lower) owns only 1 of its 4 mask pixels: 0.25 < 0.8 -> dropped; at 0.2 kept.
    masks = torch.full((2, 2, 4), -BIG)
    masks[0, :, :3] = BIG
    masks[1, 0, 2:] = BIG
    masks[1, 1, 2] = BIG
    cls = torch.tensor([[10.0, 0, 0], [0, 5.0, 0]])
    ids, segments = panoptic_inference(cls, masks, thing_ids=range(2), object_mask_threshold=0.5, overlap_threshold=0.8)
    assert [s["category_id"] for s in segments] == [0]
    assert ids.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    ids, segments = panoptic_inference(cls, masks, thing_ids=range(2), object_mask_threshold=0.5, overlap_threshold=0.2)
    assert [s["category_id"] for s in segments] == [0, 1]
    assert ids.tolist() == [[1, 1, 1, 2], [1, 1, 1, 0]]


def test_panoptic_object_threshold_and_empty_result():
    masks = torch.full((1, 2, 2), BIG)
    cls = torch.tensor([[1.0, 0.0, 0.0]])  # max prob e/(e+2) = 0.576
    ids, segments = panoptic_inference(cls, masks, thing_ids=range(1), object_mask_threshold=0.8)
    assert segments == [] and ids.dtype == torch.int32 and ids.abs().sum() == 0
    ids, segments = panoptic_inference(cls, masks, thing_ids=range(1), object_mask_threshold=0.5)
    assert segments == [{"id": 1, "isthing": True, "category_id": 0}] and ids.tolist() == [[1, 1], [1, 1]]


def test_semantic_is_probability_weighted_sum():
    cls = torch.tensor([[math.log(3.0), 0.0, 0.0]])  # probs 0.6, 0.2, 0.2 (no object)
    masks = torch.zeros(1, 1, 2)  # sigmoid 0.5
    sem = semantic_inference(cls, masks)
    torch.testing.assert_close(sem, torch.tensor([[[0.3, 0.3]], [[0.1, 0.1]]]))


def test_instances_top_k_things_only_and_mask_scores():
    cls = torch.tensor([[5.0, 0.0, 1.0, 0.0], [0.0, 4.0, 0.0, 0.0]])  # classes 0,1 things, 2 stuff
    masks = torch.tensor([[[2.0, -1.0]], [[-3.0, 0.5]]])
    result = instance_inference(cls, masks, thing_ids=range(2), top_k=3)
    probs = torch.softmax(cls, -1)[:, :-1]
    top = sorted(
        ((probs[q, c].item(), q, c) for q in range(2) for c in range(3)), reverse=True
    )[:3]
    kept = [(s, q, c) for s, q, c in top if c < 2]
    got = sorted(zip(result.query_index.tolist(), result.classes.tolist(), result.scores.tolist()))
    expected = []
    for s, q, c in kept:
        binary = masks[q] > 0
        mask_score = (torch.sigmoid(masks[q]) * binary).sum() / (binary.sum() + 1e-6)
        expected.append((q, c, s * mask_score.item()))
    assert [(q, c) for q, c, _ in got] == sorted((q, c) for q, c, _ in expected)
    for (_, _, a), (_, _, b) in zip(got, sorted(expected)):
        assert abs(a - b) < 1e-6
    assert result.masks.dtype == torch.bool


def test_resize_crops_padding_before_resizing():
    # Padded 8x8 input, image 4x8: the bottom half of the mask (padding) must not leak in.
    low = torch.zeros(1, 2, 2)
    low[0, 1, :] = 100.0  # only the padded rows are high
    out = resize_masks_to_input(low, (8, 8), (4, 8), (4, 8))
    assert out.shape == (1, 4, 8)
    full = torch.nn.functional.interpolate(low[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, full[:, :4, :])
    out = resize_masks_to_input(low, (8, 8), (4, 8), (2, 4))
    assert out.shape == (1, 2, 4)


def test_things_need_not_be_the_leading_classes():
    """Cityscapes-like: class 0 is stuff, class 2 a thing. Two class-0 queries merge into one
    stuff segment; two class-2 queries stay two instances; instances keep class 2 only."""
    masks = torch.full((4, 2, 4), -BIG)
    masks[0, :, 0] = BIG
    masks[1, :, 1] = BIG
    masks[2, :, 2] = BIG
    masks[3, :, 3] = BIG
    cls = logits_for([0, 0, 2, 2], 3)
    ids, segments = panoptic_inference(cls, masks, thing_ids=[2], object_mask_threshold=0.5)
    assert segments == [
        {"id": 1, "isthing": False, "category_id": 0},
        {"id": 2, "isthing": True, "category_id": 2},
        {"id": 3, "isthing": True, "category_id": 2},
    ]
    assert ids.tolist() == [[1, 1, 2, 3]] * 2
    # The leading-classes reading (things = {0}) would merge the class-2 queries instead.
    _, leading = panoptic_inference(cls, masks, thing_ids=range(1), object_mask_threshold=0.5)
    assert [s["isthing"] for s in leading] == [True, True, False]
    instances = instance_inference(cls, masks, thing_ids=[2], top_k=4)
    assert set(instances.classes.tolist()) == {2} and sorted(instances.query_index.tolist()) == [2, 3]
