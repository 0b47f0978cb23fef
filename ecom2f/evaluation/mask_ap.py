"""Instance-segmentation mask AP through pycocotools' COCOeval (``iouType="segm"``), in memory.

Masks are run-length encoded as images arrive, so a dataset's worth of predictions costs
RLE memory, not full masks. Ground-truth areas are mask pixel counts (COCO's JSON holds
polygon areas, which differ by a few pixels; only the small/medium/large split uses them).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["MaskAPEvaluator", "mask_ap"]

_SUMMARY_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _encode(masks: np.ndarray, name: str, image_index: int) -> list[dict]:
    """``[K, H, W]`` masks -> K RLE dicts."""
    if masks.ndim != 3:
        raise ValueError(f"image {image_index}: {name} masks must be [K, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    binary = np.asfortranarray((masks > 0.5 if masks.dtype.kind == "f" else masks != 0).transpose(1, 2, 0).astype(np.uint8))
    return mask_utils.encode(binary)


class MaskAPEvaluator:
    """Accumulates per-image instances and ground truth; ``compute`` runs COCOeval.

    Args:
        category_ids: the category ids to evaluate (default: every id seen in the ground truth).
            AP averages over those with ground truth, as COCOeval does.
    """

    def __init__(self, category_ids: Sequence[int] | None = None) -> None:
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        self._images: list[dict] = []
        self._gt: list[dict] = []
        self._dt: list[dict] = []

    def __len__(self) -> int:
        return len(self._images)

    def update(self, prediction: dict, ground_truth: dict) -> None:
        """Add one image.

        Args:
            prediction: ``masks [K, H, W]`` bool (or float probabilities, thresholded at 0.5),
                ``scores [K]``, ``classes [K]`` int category ids.
            ground_truth: ``masks [T, H, W]``, ``classes [T]``, optional ``iscrowd [T]``.
        """
        index = len(self._images)
        image_id = index + 1  # COCO ids must be positive
        pred_masks = _to_numpy(prediction["masks"])
        gt_masks = _to_numpy(ground_truth["masks"])
        if pred_masks.shape[1:] != gt_masks.shape[1:]:
            raise ValueError(
                f"image {index}: prediction masks {pred_masks.shape[1:]} and ground truth {gt_masks.shape[1:]} "
                "differ in size; resize predictions to the ground-truth size"
            )
        scores = _to_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        pred_classes = _to_numpy(prediction["classes"]).astype(np.int64).reshape(-1)
        gt_classes = _to_numpy(ground_truth["classes"]).astype(np.int64).reshape(-1)
        crowd = _to_numpy(ground_truth.get("iscrowd", np.zeros(len(gt_classes)))).astype(np.int64).reshape(-1)
        if not (len(scores) == len(pred_classes) == pred_masks.shape[0]):
            raise ValueError(
                f"image {index}: {pred_masks.shape[0]} masks, {len(scores)} scores, {len(pred_classes)} classes; "
                "give one score and class per mask"
            )
        if not (len(gt_classes) == len(crowd) == gt_masks.shape[0]):
            raise ValueError(f"image {index}: ground truth has {gt_masks.shape[0]} masks but {len(gt_classes)} classes")

        height, width = gt_masks.shape[1:]
        self._images.append({"id": image_id, "height": int(height), "width": int(width)})
        for rle, category, is_crowd in zip(_encode(gt_masks, "ground-truth", index), gt_classes, crowd):
            self._gt.append(
                {"image_id": image_id, "category_id": int(category), "segmentation": rle, "iscrowd": int(is_crowd)}
            )
        for rle, category, score in zip(_encode(pred_masks, "predicted", index), pred_classes, scores):
            self._dt.append({"image_id": image_id, "category_id": int(category), "segmentation": rle, "score": float(score)})

    def merge(self, other: MaskAPEvaluator) -> None:
        """Append another evaluator's images (e.g. from another worker), renumbering them."""
        offset = len(self._images)
        self._images += [{**image, "id": image["id"] + offset} for image in other._images]
        self._gt += [{**ann, "image_id": ann["image_id"] + offset} for ann in other._gt]
        self._dt += [{**ann, "image_id": ann["image_id"] + offset} for ann in other._dt]

    def _coco(self, annotations: list[dict], categories: list[int]) -> COCO:
        coco = COCO()
        finished = []
        for ann_id, ann in enumerate(annotations, start=1):  # id 0 would read as "unmatched"
            finished.append(
                {
                    **ann,
                    "id": ann_id,
                    "area": float(mask_utils.area(ann["segmentation"])),
                    "bbox": mask_utils.toBbox(ann["segmentation"]).tolist(),
                    "iscrowd": ann.get("iscrowd", 0),
                }
            )
        coco.dataset = {
            "images": list(self._images),
            "annotations": finished,
            "categories": [{"id": c} for c in categories],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def compute(self) -> dict:
        """COCO mask AP.

        Returns:
            ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` as fractions in
            ``[0, 1]`` (NaN where COCOeval has nothing to average) and ``per_class``
            ``{category_id: AP}``.
        """
        if not self._images:
            raise ValueError("no image was added to MaskAPEvaluator; call update() first")
        categories = self.category_ids
        if categories is None:
            categories = sorted({ann["category_id"] for ann in self._gt} | {ann["category_id"] for ann in self._dt})
        known = set(categories)
        stray = sorted({ann["category_id"] for ann in self._gt + self._dt} - known)
        if stray:
            raise ValueError(f"category ids {stray} are not in category_ids; add them or fix the class mapping")
        gt = self._coco(self._gt, categories)
        dt = self._coco(self._dt, categories)
        evaluator = COCOeval(gt, dt, iouType="segm")
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        results = {name: _nan_if_missing(value) for name, value in zip(_SUMMARY_NAMES, evaluator.stats[:6])}
        # precision: [iou thresholds, recall points, categories, area ranges, max dets]
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        per_class = {}
        for k, category in enumerate(evaluator.params.catIds):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            per_class[int(category)] = float(valid.mean()) if valid.size else math.nan
        results["per_class"] = per_class
        return results


def _nan_if_missing(value: float) -> float:
    return math.nan if value < 0 else float(value)


def mask_ap(predictions: Sequence[dict], ground_truths: Sequence[dict], category_ids: Sequence[int] | None = None) -> dict:
    """COCO mask AP of paired per-image predictions and ground truths (see :class:`MaskAPEvaluator`)."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths; pair them per image")
    evaluator = MaskAPEvaluator(category_ids)
    for prediction, ground_truth in zip(predictions, ground_truths):
        evaluator.update(prediction, ground_truth)
    return evaluator.compute()
