"""Semantic segmentation metrics on hand-computed label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecom2f.evaluation.semantic import SemanticConfusion, semantic_metrics

GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])


def test_hand_computed_metrics():
    # Kept pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,2); the 255 pixel is ignored.
    result = semantic_metrics([PRED], [GT], num_classes=3)
    np.testing.assert_allclose(result["iou"], [1 / 3, 1 / 2, 1 / 3])
    np.testing.assert_allclose(result["acc"], [1 / 2, 2 / 3, 1 / 2])
    assert result["mIoU"] == pytest.approx(7 / 18)
    assert result["mACC"] == pytest.approx(5 / 9)
    assert result["pACC"] == pytest.approx(4 / 7)
    assert result["fwIoU"] == pytest.approx(17 / 42)


def test_class_absent_from_gt_is_not_averaged_but_its_pixels_count():
    pred = PRED.copy()
    pred[0, 0] = 3  # a pixel of class 0 predicted as class 3, absent from the gt
    result = semantic_metrics([torch.from_numpy(pred)], [torch.from_numpy(GT)], num_classes=4)
    assert math.isnan(result["iou"][3]) and math.isnan(result["acc"][3])
    assert result["iou"][0] == 0.0  # class 0: no tp left
    assert result["mIoU"] == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)


def test_accumulation_equals_one_big_image_and_merge():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, size=(6, 7)) for _ in range(4)]
    preds = [np.where(rng.random(g.shape) < 0.7, g, rng.integers(0, 5, size=g.shape)) for g in gts]
    for g in gts:
        g[0, 0] = 255
    per_image = semantic_metrics(preds, gts, num_classes=5)
    stacked = semantic_metrics([np.concatenate(preds)], [np.concatenate(gts)], num_classes=5)
    assert per_image["mIoU"] == pytest.approx(stacked["mIoU"])
    a, b = SemanticConfusion(5), SemanticConfusion(5)
    for pred, gt in zip(preds[:2], gts[:2]):
        a.update(pred, gt)
    for pred, gt in zip(preds[2:], gts[2:]):
        b.update(pred, gt)
    assert (a + b).summary()["mIoU"] == pytest.approx(per_image["mIoU"])
    # An independent per-class count.
    gt_all, pred_all = np.concatenate([g.ravel() for g in gts]), np.concatenate([p.ravel() for p in preds])
    keep = gt_all != 255
    for c in range(5):
        inter = np.sum((gt_all == c) & (pred_all == c) & keep)
        union = np.sum(((gt_all == c) | (pred_all == c)) & keep)
        assert per_image["iou"][c] == pytest.approx(inter / union)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="outside 0..2"):
        semantic_metrics([np.array([[3]])], [np.array([[0]])], num_classes=3)
    with pytest.raises(ValueError, match="outside 0..2"):
        semantic_metrics([np.array([[0]])], [np.array([[7]])], num_classes=3)
    with pytest.raises(ValueError, match="argmax"):
        semantic_metrics([np.zeros((1, 1))], [np.array([[0]])], num_classes=3)
    with pytest.raises(ValueError, match="differ in shape"):
        semantic_metrics([np.zeros((1, 2), int)], [np.zeros((2, 1), int)], num_classes=3)
    with pytest.raises(ValueError, match="is a valid class id"):
        SemanticConfusion(3, ignore_index=1)
    assert math.isnan(SemanticConfusion(3).summary()["mIoU"])
