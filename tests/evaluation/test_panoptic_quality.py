"""Panoptic quality: hand-computed cases, a loop reference, and real COCO annotations."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest

from ecom2f.evaluation.panoptic_quality import (
    PanopticGroundTruth,
    PQStat,
    PQStatCat,
    contiguous_categories,
    contiguous_segments,
    image_pq,
    pq_single,
)

CATEGORIES = {
    1: {"name": "person", "isthing": 1},
    2: {"name": "car", "isthing": 1},
    3: {"name": "sky", "isthing": 0},
    4: {"name": "grass", "isthing": 0},
}


def _row(values) -> np.ndarray:
    return np.array([values], dtype=np.int64)  # [1, W]


def _crafted_image():
    """20 pixels: two persons, sky, a crowd of cars, void, a car (see the asserts)."""
    gt = _row([11, 11, 11, 11, 12, 12, 12, 12, 13, 13, 13, 13, 13, 14, 14, 14, 0, 0, 15, 15])
    pred = _row([1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 0, 0, 4, 4, 4, 2, 4, 5, 5])
    gt_segments = [
        {"id": 11, "category_id": 1, "iscrowd": 0},
        {"id": 12, "category_id": 1, "iscrowd": 0},
        {"id": 13, "category_id": 3, "iscrowd": 0},
        {"id": 14, "category_id": 2, "iscrowd": 1},
        {"id": 15, "category_id": 2, "iscrowd": 0},
    ]
    pred_segments = [
        {"id": 1, "category_id": 1},  # = gt 11: IoU 1
        {"id": 2, "category_id": 1},  # 3 px of gt 12 + 1 void px: IoU 3 / (4 + 4 - 3 - 1) = 0.75
        {"id": 3, "category_id": 3},  # 3 px of gt 13 + 1 px of gt 12: IoU 3 / 6 = 0.5, not > 0.5
        {"id": 4, "category_id": 2},  # 3 px of the car crowd + 1 void px: excused
        {"id": 5, "category_id": 2},  # = gt 15: IoU 1
    ]
    return pred, pred_segments, gt, gt_segments


def test_crafted_image_counts_and_summary():
    stat = pq_single(*_crafted_image(), CATEGORIES)
    assert stat[1] == PQStatCat(iou=1.75, tp=2, fp=0, fn=0)
    assert stat[2] == PQStatCat(iou=1.0, tp=1, fp=0, fn=0)  # crowd is neither fn nor fp
    assert stat[3] == PQStatCat(iou=0.0, tp=0, fp=1, fn=1)  # IoU exactly 0.5 does not match
    assert stat[4] == PQStatCat()

    summary = stat.summary(CATEGORIES)
    assert summary["per_class"][1] == pytest.approx({"pq": 0.875, "sq": 0.875, "rq": 1.0})
    assert summary["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert summary["per_class"][4] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # absent: not averaged
    assert summary["All"] == pytest.approx({"pq": 1.875 / 3, "sq": 1.875 / 3, "rq": 2 / 3, "n": 3})
    assert summary["Things"] == pytest.approx({"pq": 0.9375, "sq": 0.9375, "rq": 1.0, "n": 2})
    assert summary["Stuff"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1})


def test_iou_just_above_half_matches():
    gt = _row([7, 7, 7, 7, 0, 9])
    pred = _row([1, 1, 1, 2, 1, 1])  # pred 1: 3 of gt 7, 1 void, 1 of gt 9
    gt_segments = [{"id": 7, "category_id": 3, "iscrowd": 0}, {"id": 9, "category_id": 4, "iscrowd": 0}]
    pred_segments = [{"id": 1, "category_id": 3}, {"id": 2, "category_id": 4}]
    stat = pq_single(pred, pred_segments, gt, gt_segments, CATEGORIES)
    # union = 5 + 4 - 3 - 1 (void) = 5: IoU 0.6
    assert stat[3] == PQStatCat(iou=pytest.approx(0.6), tp=1)
    # pred 2 lies on gt 7 (matched elsewhere): fp for grass; gt 9 unmatched: fn for grass
    assert stat[4] == PQStatCat(fp=1, fn=1)


def test_void_is_removed_from_the_union_only_for_the_prediction():
    gt = _row([5, 5, 5, 5, 0, 0, 0, 0])
    pred = _row([1, 1, 0, 0, 1, 1, 1, 1])  # 2 of gt 5, 4 void
    stat = pq_single(pred, [{"id": 1, "category_id": 1}], gt, [{"id": 5, "category_id": 1}], CATEGORIES)
    # union = 6 + 4 - 2 - 4 = 4: IoU 0.5, no match; pred is 4/6 void: excused
    assert stat[1] == PQStatCat(fn=1)


@pytest.mark.parametrize(
    ("void_pixels", "expected_fp"),
    [(2, 1), (3, 0)],  # of 4 predicted pixels: exactly half is not enough to excuse
)
def test_false_positive_excused_only_when_more_than_half_void(void_pixels, expected_fp):
    gt = _row([0] * void_pixels + [8] * (6 - void_pixels))
    pred = _row([1, 1, 1, 1, 0, 0])
    stat = pq_single(pred, [{"id": 1, "category_id": 2}], gt, [{"id": 8, "category_id": 3}], CATEGORIES)
    assert stat[2].fp == expected_fp
    assert stat[3].fn == 1


def test_crowd_excuses_only_predictions_of_its_category():
    gt = _row([20, 20, 20, 20, 21, 21, 21, 21])
    gt_segments = [{"id": 20, "category_id": 1, "iscrowd": 1}, {"id": 21, "category_id": 2, "iscrowd": 1}]
    pred = _row([1, 1, 1, 2, 3, 3, 3, 3])
    pred_segments = [
        {"id": 1, "category_id": 1},  # on the person crowd: excused
        {"id": 2, "category_id": 2},  # a car on the person crowd: counted
        {"id": 3, "category_id": 1},  # a person on the car crowd: counted
    ]
    stat = pq_single(pred, pred_segments, gt, gt_segments, CATEGORIES)
    assert stat[1] == PQStatCat(fp=1)
    assert stat[2] == PQStatCat(fp=1)
    assert stat.summary(CATEGORIES)["All"]["pq"] == 0.0


def test_crowd_and_void_add_up_to_excuse():
    gt = _row([30, 30, 0, 31, 31, 31])
    gt_segments = [{"id": 30, "category_id": 1, "iscrowd": 1}, {"id": 31, "category_id": 4, "iscrowd": 0}]
    pred = _row([1, 1, 1, 1, 2, 2])  # pred 1: 2 crowd + 1 void + 1 grass = 3/4 excused
    stat = pq_single(pred, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 4}], gt, gt_segments, CATEGORIES)
    assert stat[1] == PQStatCat()
    assert stat[4] == PQStatCat(iou=pytest.approx(2 / 3), tp=1)


def test_unlisted_gt_ids_are_not_void():
    gt = _row([99, 99, 99, 0])
    pred = _row([1, 1, 1, 1])
    stat = pq_single(pred, [{"id": 1, "category_id": 3}], gt, [], CATEGORIES)
    assert stat[3] == PQStatCat(fp=1)  # only 1 of 4 pixels is void


def test_empty_image_summary_is_nan_and_stats_merge():
    empty = pq_single(_row([0, 0]), [], _row([0, 0]), [], CATEGORIES)
    assert empty == PQStat()
    assert math.isnan(empty.summary(CATEGORIES)["All"]["pq"]) and empty.summary(CATEGORIES)["All"]["n"] == 0

    a = PQStat({1: PQStatCat(0.8, 1, 0, 0)})
    b = PQStat({1: PQStatCat(0.6, 1, 1, 0), 3: PQStatCat(0.0, 0, 0, 2)})
    merged = sum([a, b])
    assert merged[1] == PQStatCat(pytest.approx(1.4), 2, 1, 0) and merged[3] == PQStatCat(0.0, 0, 0, 2)
    assert PQStat.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged


def test_large_ids_use_the_sorted_path():
    big = 256**3 - 5
    gt = _row([big, big, big, 3])
    pred = _row([70000, 70000, 70000, 0])
    stat = pq_single(
        pred, [{"id": 70000, "category_id": 2}], gt,
        [{"id": big, "category_id": 2}, {"id": 3, "category_id": 4}], CATEGORIES,
    )
    assert stat[2] == PQStatCat(iou=1.0, tp=1) and stat[4] == PQStatCat(fn=1)


def test_bad_inputs_are_rejected():
    gt = _row([1, 1])
    seg = [{"id": 1, "category_id": 1}]
    with pytest.raises(ValueError, match="no entry in pred_segments"):
        pq_single(_row([1, 2]), seg, gt, seg, CATEGORIES)
    with pytest.raises(ValueError, match="no pixel"):
        pq_single(_row([1, 1]), seg + [{"id": 2, "category_id": 1}], gt, seg, CATEGORIES)
    with pytest.raises(ValueError, match="not in categories"):
        pq_single(_row([1, 1]), [{"id": 1, "category_id": 77}], gt, seg, CATEGORIES)
    with pytest.raises(ValueError, match="differ in shape"):
        pq_single(np.ones((2, 2), dtype=np.int64), seg, gt, seg, CATEGORIES)
    with pytest.raises(ValueError, match="duplicate"):
        pq_single(_row([1, 1]), seg + seg, gt, seg, CATEGORIES)
    with pytest.raises(ValueError, match="integer"):
        pq_single(_row([1, 1]).astype(float), seg, gt, seg, CATEGORIES)
    with pytest.raises(ValueError, match="isthing"):
        pq_single(_row([1, 1]), seg, gt, seg, {1: {"name": "x"}})


# --- an independent, loop-based reading of panopticapi's rules -----------------------


def _reference_pq(pred, pred_segments, gt, gt_segments):
    stats = defaultdict(lambda: [0.0, 0, 0, 0])  # iou, tp, fp, fn
    gt_info = {s["id"]: s for s in gt_segments}
    pred_info = {s["id"]: s for s in pred_segments}
    pairs = defaultdict(int)
    pred_area = defaultdict(int)
    gt_area = defaultdict(int)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        pairs[(g, p)] += 1
        pred_area[p] += 1
        gt_area[g] += 1
    gt_done, pred_done = set(), set()
    for (g, p), inter in sorted(pairs.items()):
        if g not in gt_info or p not in pred_info or gt_info[g].get("iscrowd", 0) == 1:
            continue
        if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
            continue
        iou = inter / (pred_area[p] + gt_area[g] - inter - pairs.get((0, p), 0))
        if iou > 0.5:
            entry = stats[gt_info[g]["category_id"]]
            entry[0] += iou
            entry[1] += 1
            gt_done.add(g)
            pred_done.add(p)
    crowd = {}
    for g, info in gt_info.items():
        if g in gt_done:
            continue
        if info.get("iscrowd", 0) == 1:
            crowd[info["category_id"]] = g
        else:
            stats[info["category_id"]][3] += 1
    for p, info in pred_info.items():
        if p in pred_done:
            continue
        ignored = pairs.get((0, p), 0)
        if info["category_id"] in crowd:
            ignored += pairs.get((crowd[info["category_id"]], p), 0)
        if ignored / pred_area[p] <= 0.5:
            stats[info["category_id"]][2] += 1
    return {c: PQStatCat(*v) for c, v in stats.items() if v[1] + v[2] + v[3] > 0}


def _random_case(rng: np.random.Generator):
    h, w = rng.integers(4, 24, size=2)
    num_gt = int(rng.integers(0, 7))
    gt_ids = rng.choice(np.arange(1, 400), size=num_gt, replace=False)
    # Blocky gt: a coarse random grid upsampled, with void cells.
    coarse = rng.choice(np.concatenate([[0], gt_ids]), size=(int(h) // 2 + 1, int(w) // 2 + 1))
    gt = np.kron(coarse, np.ones((2, 2), dtype=np.int64))[:h, :w]
    present = sorted(set(np.unique(gt).tolist()) - {0})
    gt_segments = [
        {"id": i, "category_id": int(rng.integers(1, 5)), "iscrowd": int(rng.random() < 0.25)} for i in present
    ]
    if present and rng.random() < 0.3:
        gt_segments = gt_segments[:-1]  # leave one id unlisted
    # Prediction: the gt relabelled, then noise and a shifted block.
    pred = gt.copy()
    noise = rng.random(gt.shape) < rng.uniform(0, 0.5)
    pred[noise] = rng.integers(0, 6, size=int(noise.sum()))
    pred = np.roll(pred, int(rng.integers(0, 3)), axis=1)
    pred_present = sorted(set(np.unique(pred).tolist()) - {0})
    gt_category = {s["id"]: s["category_id"] for s in gt_segments}
    pred_segments = [
        {"id": i, "category_id": gt_category.get(i, int(rng.integers(1, 5))) if rng.random() < 0.8
         else int(rng.integers(1, 5))}
        for i in pred_present
    ]
    return pred, pred_segments, gt, gt_segments


def test_matches_loop_reference_on_random_cases():
    rng = np.random.default_rng(0)
    total_ours, total_reference = PQStat(), PQStat()
    for _ in range(300):
        pred, pred_segments, gt, gt_segments = _random_case(rng)
        ours = pq_single(pred, pred_segments, gt, gt_segments, CATEGORIES)
        reference = _reference_pq(pred, pred_segments, gt, gt_segments)
        assert set(ours.per_category) == set(reference)
        for category, expected in reference.items():
            got = ours[category]
            assert (got.tp, got.fp, got.fn) == (expected.tp, expected.fp, expected.fn)
            assert got.iou == pytest.approx(expected.iou, abs=1e-12)
        total_ours += ours
        total_reference += PQStat(reference)
    ours_summary, reference_summary = total_ours.summary(CATEGORIES), total_reference.summary(CATEGORIES)
    for group in ("All", "Things", "Stuff"):
        assert ours_summary[group] == pytest.approx(reference_summary[group])
    for category in CATEGORIES:
        assert ours_summary["per_class"][category] == pytest.approx(reference_summary["per_class"][category])
    assert sum(s.tp for s in total_ours.per_category.values()) > 50  # the cases do match things


def test_indexed_ground_truth_serves_several_predictions():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pred, pred_segments, gt, gt_segments = _random_case(rng)
        truth = PanopticGroundTruth(gt, gt_segments, CATEGORIES)
        for shift in range(3):  # e.g. the exits of one image
            shifted = np.roll(pred, shift, axis=0)
            assert truth.pq(shifted, pred_segments) == pq_single(shifted, pred_segments, gt, gt_segments, CATEGORIES)
    with pytest.raises(ValueError, match="differ in shape"):
        truth.pq(np.zeros((1, 1), dtype=np.int64), [])


# --- per image, in contiguous ids (step 2 and the evaluation) ----------------------------

# The crafted image's classes under dataset ids with gaps, listed in contiguous order (as a
# dataset's metadata sorts them): person 7 -> 0, car 9 -> 1, sky 25 -> 2, grass 40 -> 3.
DATASET_CATEGORIES = [{"id": 7, "isthing": 1}, {"id": 9, "isthing": 1}, {"id": 25, "isthing": 0},
                      {"id": 40, "isthing": 0}]
TO_CONTIGUOUS = {7: 0, 9: 1, 25: 2, 40: 3}


def test_image_pq_of_the_crafted_image_in_contiguous_ids():
    pred, pred_segments, gt, gt_segments = _crafted_image()
    to_dataset = {1: 7, 2: 9, 3: 25, 4: 40}
    gt_segments = [{**s, "category_id": to_dataset[s["category_id"]]} for s in gt_segments]  # as annotated
    pred_segments = [{**s, "category_id": TO_CONTIGUOUS[to_dataset[s["category_id"]]]} for s in pred_segments]
    categories = contiguous_categories(DATASET_CATEGORIES)
    assert categories == {0: {"isthing": 1}, 1: {"isthing": 1}, 2: {"isthing": 0}, 3: {"isthing": 0}}
    segments = contiguous_segments(gt_segments, TO_CONTIGUOUS)
    assert [(s["id"], s["category_id"], s["iscrowd"]) for s in segments] == [
        (11, 0, 0), (12, 0, 0), (13, 2, 0), (14, 1, 1), (15, 1, 0)]

    quality = image_pq(PanopticGroundTruth(gt, segments, categories), pred, pred_segments)
    # By hand (see _crafted_image): person IoUs 1 and 0.75 -> PQ = SQ = 1.75 / 2, RQ 1; car IoU 1 -> 1, 1, 1
    # (its crowd excuses pred 4); sky unmatched at IoU exactly 0.5 -> FP + FN -> 0, 0, 0; grass absent.
    assert quality.stat[0] == PQStatCat(iou=1.75, tp=2) and quality.stat[1] == PQStatCat(iou=1.0, tp=1)
    assert quality.stat[2] == PQStatCat(fp=1, fn=1) and quality.stat[3] == PQStatCat()
    assert quality.averages() == pytest.approx({"pq": (0.875 + 1 + 0) / 3, "sq": (0.875 + 1 + 0) / 3,
                                               "rq": (1 + 1 + 0) / 3, "pq_things": (0.875 + 1) / 2, "pq_stuff": 0.0})
    # The id space does not change the image's PQ: the same image scored in dataset ids.
    in_dataset_ids = pq_single(pred, [{**s, "category_id": DATASET_CATEGORIES[s["category_id"]]["id"]}
                                      for s in pred_segments], gt, gt_segments, DATASET_CATEGORIES)
    assert in_dataset_ids.summary(DATASET_CATEGORIES)["All"]["pq"] == quality.pq


def test_image_pq_without_any_segment_is_nan():
    quality = image_pq(PanopticGroundTruth(_row([0, 0]), [], contiguous_categories(DATASET_CATEGORIES)),
                       _row([0, 0]), [])
    assert quality.stat == PQStat() and all(math.isnan(v) for v in quality.averages().values())


def test_a_segment_of_an_unknown_category_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"segment 5 has category_id 8, which is not among the dataset's categories "
                                         r"\[7, 9, 25, 40\]"):
        contiguous_segments([{"id": 5, "category_id": 8}], TO_CONTIGUOUS)


# --- real COCO panoptic annotations ---------------------------------------------------


def _rgb_to_id(path) -> np.ndarray:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@pytest.fixture(scope="module")
def coco_sample(shared_dir):
    root = shared_dir / "data" / "coco_panoptic_sample"
    if not (root / "panoptic_examples.json").is_file():
        pytest.skip(f"COCO panoptic sample not found at {root} (set ECOM2F_SHARED_DIR)")
    meta = json.loads((root / "panoptic_examples.json").read_text())
    images = []
    for annotation in meta["annotations"]:
        ids = _rgb_to_id(root / "panoptic_examples" / annotation["file_name"])
        images.append((annotation, ids))
    return meta["categories"], images


def test_coco_gt_against_itself_is_perfect(coco_sample):
    categories, images = coco_sample
    total = PQStat()
    for annotation, ids in images:
        segments = annotation["segments_info"]
        for segment in segments:  # the decoded PNG agrees with the JSON areas
            assert int((ids == segment["id"]).sum()) == segment["area"]
        stat = pq_single(ids, segments, ids, segments, categories)
        summary = stat.summary(categories)
        present = {s["category_id"] for s in segments if not s["iscrowd"]}
        assert summary["All"] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": len(present)})
        assert all(stat[c].fp == 0 and stat[c].fn == 0 for c in present)
        total += stat
    summary = total.summary(categories)
    assert summary["All"]["pq"] == 1.0 and summary["Things"]["pq"] == 1.0 and summary["Stuff"]["pq"] == 1.0


def test_coco_gt_against_edited_gt(coco_sample):
    categories, images = coco_sample
    annotation, gt = max(images, key=lambda item: len(item[0]["segments_info"]))
    segments = annotation["segments_info"]
    plain = [s for s in segments if not s["iscrowd"]]
    by_category = defaultdict(list)
    for s in plain:
        by_category[s["category_id"]].append(s)
    # The category with the most instances loses 40% of one instance and all of another.
    crowded = max(by_category, key=lambda c: len(by_category[c]))
    eroded, dropped = by_category[crowded][0], by_category[crowded][1]
    assert len(by_category[crowded]) >= 3
    # A singleton category gets relabelled to a category absent from the image.
    relabelled = next(s for s in plain if len(by_category[s["category_id"]]) == 1)
    used = {s["category_id"] for s in segments}
    new_category = next(c["id"] for c in categories if c["id"] not in used)

    pred = gt.copy()
    eroded_pixels = np.flatnonzero(gt.ravel() == eroded["id"])
    removed = int(round(0.4 * eroded_pixels.size))
    pred.ravel()[eroded_pixels[:removed]] = 0
    pred[gt == dropped["id"]] = 0
    pred_segments = []
    for s in segments:
        if s["id"] == dropped["id"]:
            continue
        category = new_category if s["id"] == relabelled["id"] else s["category_id"]
        pred_segments.append({"id": s["id"], "category_id": category})

    stat = pq_single(pred, pred_segments, gt, segments, categories)
    count = len(by_category[crowded])
    eroded_iou = (eroded["area"] - removed) / eroded["area"]  # void pixels leave the union
    assert stat[crowded].tp == count - 1 and stat[crowded].fn == 1 and stat[crowded].fp == 0
    assert stat[crowded].iou == pytest.approx(count - 2 + eroded_iou)
    assert stat[relabelled["category_id"]] == PQStatCat(fn=1)
    assert stat[new_category] == PQStatCat(fp=1)

    summary = stat.summary(categories)
    n_present = len(by_category) + 1  # plus the new category
    crowded_pq = (count - 2 + eroded_iou) / (count - 1 + 0.5)
    untouched = len(by_category) - 2  # every other category: PQ 1
    assert summary["All"]["n"] == n_present
    assert summary["All"]["pq"] == pytest.approx((untouched + crowded_pq) / n_present)
    assert summary["per_class"][crowded]["sq"] == pytest.approx((count - 2 + eroded_iou) / (count - 1))
    assert summary["per_class"][crowded]["rq"] == pytest.approx((count - 1) / (count - 0.5))
