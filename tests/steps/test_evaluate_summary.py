"""The evaluation's per-image rows hold plain arrays and JSON, and the dataset metrics merged from
them equal one accumulator fed every image directly (what the pickled accumulators gave)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from ecom2f.evaluation import MaskAPEvaluator, SemanticConfusion
from ecom2f.steps.evaluate.stages import EvalScorer
from ecom2f.steps.evaluate.summary import mask_ap_of, miou_of, summarize
from ecom2f.steps.packing import pack, pack_masks

SIZE = 24
# Contiguous ids: 0, 1 things, 2, 3 stuff; 255 is ignored in the semantic ground truth.
CATEGORIES = {0: {"isthing": 1}, 1: {"isthing": 1}, 2: {"isthing": 0}, 3: {"isthing": 0}}
SCORING = {"categories": CATEGORIES, "ignore_label": 255, "thing_classes": [0, 1],
           "tasks": ["panoptic", "semantic", "instance"], "to_contiguous": {}}


def _box(y0, x0, h, w) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    return mask


def _image(rng: np.random.Generator, index: int):
    """One crafted image: ground truth (two thing boxes over two stuff halves) and per variant a
    prediction (boxes shifted by a random offset, random scores, a random semantic map)."""
    things = np.stack([_box(2, 2, 8, 8), _box(12, 10, 9, 9)])
    ids = np.where(np.arange(SIZE)[:, None] < SIZE // 2, 3000, 4000) * np.ones((1, SIZE), np.int64)
    ids[things[0]], ids[things[1]] = 1, 2
    semantic = np.where(ids == 3000, 2, np.where(ids == 4000, 3, np.where(ids == 1, 0, 1))).astype(np.uint8)
    semantic[0, :3] = 255
    truth = {"image_id": str(index), "difficulty": float("nan"), "id_map": ids.astype(np.uint16),
             "segments": [{"id": 1, "category_id": 0, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0},
                          {"id": 3000, "category_id": 2, "iscrowd": 0}, {"id": 4000, "category_id": 3, "iscrowd": 0}],
             "semantic": semantic,
             "things": {"masks": pack_masks(things), "classes": np.array([0, 1]), "iscrowd": np.array([0, index % 2])}}
    results, direct = [], []
    for depth in (1, 2):
        shift = int(rng.integers(0, 4))
        masks = np.stack([np.roll(things[0], shift, axis=1), np.roll(things[1], -shift, axis=0), _box(0, 18, 5, 5)])
        scores, classes = rng.uniform(0.2, 1, 3), np.array([0, 1, int(rng.integers(0, 2))])
        predicted_semantic = rng.integers(0, 4, (SIZE, SIZE)).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        results.append({"variant": f"depth_{depth}", "kind": "fixed", "depth": depth, "seconds": 0.1,
                        "encoder_gflops": float(depth), "total_gflops": 10.0 + depth, "ids": ids.astype(np.uint16),
                        "segments": truth["segments"], "semantic": predicted_semantic,
                        "instances": {"rle": rle, "which": np.arange(3), "size": (SIZE, SIZE), "scores": scores,
                                      "classes": classes}})
        direct.append((masks, scores, classes, predicted_semantic))
    return truth, results, things, direct


@pytest.fixture(scope="module")
def crafted():
    rng = np.random.default_rng(0)
    scorer = EvalScorer(SCORING)
    truths, results, references = [], [], {1: (SemanticConfusion(4), MaskAPEvaluator([0, 1])),
                                           2: (SemanticConfusion(4), MaskAPEvaluator([0, 1]))}
    for index in range(5):
        truth, variants, things, direct = _image(rng, index)
        truths.append(pack(truth))
        results.append(pack(variants))
        for depth, (masks, scores, classes, predicted_semantic) in zip((1, 2), direct):
            confusion, detections = references[depth]
            confusion.update(predicted_semantic, truth["semantic"])
            detections.update({"masks": masks, "scores": scores, "classes": classes},
                              {"masks": things, "classes": truth["things"]["classes"],
                               "iscrowd": truth["things"]["iscrowd"]})
    rows = scorer({"truth": np.array(truths, dtype=object), "result": np.array(results, dtype=object)})
    return rows, references


def test_rows_hold_arrays_and_json_not_bytes(crafted):
    rows, _ = crafted
    assert {"semantic", "instances"} <= set(rows.columns)
    assert not {"semantic_state", "instance_state"} & set(rows.columns)
    for _, row in rows.iterrows():
        semantic = json.loads(row["semantic"])
        assert all(isinstance(v, int) and v > 0 for v in semantic["counts"])
        assert len(semantic["cells"]) == len(semantic["counts"]) <= 16
        record = json.loads(row["instances"])
        assert len(record["detections"]["counts"]) == 3 and len(record["truth"]["counts"]) == 2


def test_summary_metrics_equal_one_accumulator_fed_every_image(crafted, tmp_path):
    rows, references = crafted
    # Through parquet, as the job writes and the report reads them.
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    stored = pd.read_parquet(tmp_path / "rows.parquet")
    summary = summarize(stored, CATEGORIES, tasks=("panoptic", "semantic", "instance"), oracle=False)
    for depth, (confusion, detections) in references.items():
        row = summary[summary["variant"] == f"depth_{depth}"].iloc[0]
        expected_miou, expected_ap = confusion.summary()["mIoU"], detections.compute()["AP"]
        assert 0.05 < expected_miou < 0.95 and 0.05 < expected_ap < 0.95  # not a comparison of 0s or 1s
        assert row["miou"] == pytest.approx(expected_miou, abs=1e-12)
        assert row["mask_ap"] == pytest.approx(expected_ap, abs=1e-12)
        group = stored[stored["depth"] == depth]
        assert miou_of(group, 4) == pytest.approx(expected_miou, abs=1e-12)
        assert mask_ap_of(group, [0, 1]) == pytest.approx(expected_ap, abs=1e-12)


def test_perfect_predictions_give_one():
    """A hand-checkable case: one image predicted exactly -> mIoU 1 and mask AP 1."""
    masks = np.stack([_box(1, 1, 6, 6), _box(10, 10, 8, 8)])
    rle = [c["counts"].decode("ascii") for c in
           mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))]
    record = {"size": [SIZE, SIZE], "detections": {"counts": rle, "scores": [0.9, 0.8], "classes": [0, 1]},
              "truth": {"counts": rle, "classes": [0, 1], "iscrowd": [0, 0]}}
    labels = np.where(masks[0], 0, np.where(masks[1], 1, 2))
    confusion = SemanticConfusion(4)
    confusion.update(labels, labels)
    cells = np.flatnonzero(confusion.matrix.reshape(-1))
    rows = pd.DataFrame({"instances": [json.dumps(record)], "semantic": [json.dumps(
        {"cells": cells.tolist(), "counts": confusion.matrix.reshape(-1)[cells].tolist()})]})
    assert mask_ap_of(rows, [0, 1]) == pytest.approx(1.0)
    assert miou_of(rows, 4) == pytest.approx(1.0)
