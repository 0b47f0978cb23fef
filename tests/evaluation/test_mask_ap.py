"""Mask AP through COCOeval: perfect predictions and hand-computed partial cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecom2f.evaluation.mask_ap import MaskAPEvaluator, mask_ap

SIZE = 128
# COCO's 101-point interpolation: recall 0.5 reached at precision 1 covers thresholds 0..0.5.
HALF_RECALL_AP = 51 / 101


def _box(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask


def _image(masks, classes, scores=None, iscrowd=None) -> dict:
    result = {"masks": np.stack(masks) if masks else np.zeros((0, SIZE, SIZE), bool), "classes": np.array(classes)}
    if scores is not None:
        result["scores"] = np.array(scores, dtype=float)
    if iscrowd is not None:
        result["iscrowd"] = np.array(iscrowd)
    return result


def test_perfect_predictions_score_one():
    small, medium, large = _box(0, 0, 10, 10), _box(20, 0, 40, 40), _box(0, 0, 100, 100)
    gts = [_image([small, medium], [1, 2]), _image([large], [1])]
    preds = [_image([small, medium], [1, 2], [0.9, 0.8]), _image([large], [1], [0.7])]
    result = mask_ap(preds, gts)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert result[name] == pytest.approx(1.0), name
    assert result["per_class"] == pytest.approx({1: 1.0, 2: 1.0})


def test_torch_inputs_and_float_masks_are_accepted():
    gt = _box(5, 5, 20, 20)
    prediction = {
        "masks": torch.from_numpy(gt[None].astype(np.float32) * 0.9),  # probabilities > 0.5
        "scores": torch.tensor([0.5]),
        "classes": torch.tensor([3]),
    }
    result = mask_ap([prediction], [{"masks": torch.from_numpy(gt[None]), "classes": torch.tensor([3])}])
    assert result["AP"] == pytest.approx(1.0)


def _partial_case(false_positive_score: float, false_positive_on_crowd: bool):
    """Class 1: one hit, one miss, one false positive. Class 2: one detection at IoU 0.72."""
    hit, missed = _box(0, 0, 10, 10), _box(0, 30, 10, 10)
    crowd = _box(40, 40, 12, 12)
    stray = _box(42, 42, 8, 8) if false_positive_on_crowd else _box(20, 20, 8, 8)
    cls2_gt = _box(50, 0, 10, 10)
    cls2_pred = _box(50, 0, 8, 9)  # 72 of the 100 gt pixels, nothing outside: IoU 0.72
    gt = _image([hit, missed, crowd, cls2_gt], [1, 1, 1, 2], iscrowd=[0, 0, 1, 0])
    pred = _image([hit, stray, cls2_pred], [1, 1, 2], [0.6, false_positive_score, 0.5])
    return [pred], [gt]


def test_partial_case_hand_computed():
    result = mask_ap(*_partial_case(false_positive_score=0.3, false_positive_on_crowd=False))
    # Class 1: hit (P 1, R .5), then the stray (P .5, R .5): AP = 51/101 at every IoU threshold.
    # Class 2: TP for IoU thresholds .50-.70 (5 of 10), FP above.
    assert result["per_class"][1] == pytest.approx(HALF_RECALL_AP)
    assert result["per_class"][2] == pytest.approx(0.5)
    assert result["AP"] == pytest.approx((HALF_RECALL_AP + 0.5) / 2)
    assert result["AP50"] == pytest.approx((HALF_RECALL_AP + 1.0) / 2)
    assert result["AP75"] == pytest.approx((HALF_RECALL_AP + 0.0) / 2)
    assert result["APs"] == pytest.approx(result["AP"])  # every gt is small (< 32^2 px)
    assert math.isnan(result["APm"]) and math.isnan(result["APl"])


def test_higher_scored_false_positive_halves_precision_unless_on_crowd():
    result = mask_ap(*_partial_case(false_positive_score=0.9, false_positive_on_crowd=False))
    # The stray comes first: precision 1/2 at recall .5.
    assert result["per_class"][1] == pytest.approx(0.5 * HALF_RECALL_AP)
    result = mask_ap(*_partial_case(false_positive_score=0.9, false_positive_on_crowd=True))
    # On a crowd region of its class the detection is ignored, not a false positive.
    assert result["per_class"][1] == pytest.approx(HALF_RECALL_AP)


def test_no_predictions_score_zero_and_merge_renumbers_images():
    gt = _image([_box(0, 0, 10, 10)], [1])
    empty = _image([], [], [])
    assert mask_ap([empty], [gt])["AP"] == 0.0

    first, second = MaskAPEvaluator(), MaskAPEvaluator()
    first.update(_image([_box(0, 0, 10, 10)], [1], [0.9]), gt)
    second.update(empty, gt)
    first.merge(second)
    assert len(first) == 2
    # One of two gt found, no false positive: recall .5 at precision 1.
    assert first.compute()["AP"] == pytest.approx(HALF_RECALL_AP)


def test_bad_inputs_are_rejected():
    gt = _image([_box(0, 0, 10, 10)], [1])
    with pytest.raises(ValueError, match="one score and class per mask"):
        mask_ap([_image([_box(0, 0, 10, 10)], [1], [0.9, 0.1])], [gt])
    with pytest.raises(ValueError, match="differ in size"):
        mask_ap([{"masks": np.zeros((1, 8, 8), bool), "scores": [1.0], "classes": [1]}], [gt])
    with pytest.raises(ValueError, match="not in category_ids"):
        mask_ap([_image([_box(0, 0, 10, 10)], [5], [0.9])], [gt], category_ids=[1])
    with pytest.raises(ValueError, match="pair them"):
        mask_ap([], [gt])
    with pytest.raises(ValueError, match="no image"):
        MaskAPEvaluator().compute()
