"""Semantic-segmentation metrics from a confusion matrix (detectron2's SemSegEvaluator rules).

Pixels whose ground truth is ``ignore_index`` are left out. Class IoU and accuracy are
defined for classes present in the ground truth of everything accumulated; mIoU, mACC
and fwIoU average over those, pACC is the share of correct non-ignored pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SemanticConfusion", "semantic_metrics"]


def _as_label_map(labels, name: str) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {labels.dtype}; take the argmax first")
    return labels.astype(np.int64, copy=False)


class SemanticConfusion:
    """Running confusion matrix ``[gt class, predicted class]`` (``+`` merges two).

    Args:
        num_classes: K; valid class ids are ``0..K-1``.
        ignore_index: ground-truth value excluded from every metric (COCO/ADE: 255).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class id (0..{num_classes - 1}); pick another")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, gt) -> None:
        """Add one image (or a batch) of label maps of equal shape, e.g. ``[H, W]``."""
        pred = _as_label_map(pred, "pred")
        gt = _as_label_map(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape; resize the prediction first")
        keep = gt != self.ignore_index
        pred, gt = pred[keep], gt[keep]
        for name, values in (("pred", pred), ("gt", gt)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} has class ids outside 0..{self.num_classes - 1} "
                    f"(min {values.min()}, max {values.max()}); ground-truth void must be {self.ignore_index}"
                )
        self.matrix += np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def __add__(self, other: SemanticConfusion) -> SemanticConfusion:
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge confusion matrices of different num_classes or ignore_index")
        merged = SemanticConfusion(self.num_classes, self.ignore_index)
        merged.matrix = self.matrix + other.matrix
        return merged

    def summary(self) -> dict:
        """``mIoU``, ``fwIoU``, ``mACC``, ``pACC`` (fractions) and per-class ``iou`` / ``acc`` arrays
        ``[K]`` (NaN for classes absent from the ground truth)."""
        true_positive = np.diag(self.matrix).astype(np.float64)
        gt_pixels = self.matrix.sum(1).astype(np.float64)
        pred_pixels = self.matrix.sum(0).astype(np.float64)
        present = gt_pixels > 0
        iou = np.full(self.num_classes, np.nan)
        acc = np.full(self.num_classes, np.nan)
        acc[present] = true_positive[present] / gt_pixels[present]
        iou[present] = true_positive[present] / (gt_pixels + pred_pixels - true_positive)[present]
        total = gt_pixels.sum()
        if total == 0:
            nan = float("nan")
            return {"mIoU": nan, "fwIoU": nan, "mACC": nan, "pACC": nan, "iou": iou, "acc": acc}
        return {
            "mIoU": float(iou[present].mean()),
            "fwIoU": float((iou[present] * gt_pixels[present] / total).sum()),
            "mACC": float(acc[present].mean()),
            "pACC": float(true_positive.sum() / total),
            "iou": iou,
            "acc": acc,
        }


def semantic_metrics(preds, gts, num_classes: int, ignore_index: int = 255) -> dict:
    """Metrics of paired label maps (see :meth:`SemanticConfusion.summary`)."""
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths; pair them per image")
    confusion = SemanticConfusion(num_classes, ignore_index)
    for pred, gt in zip(preds, gts):
        confusion.update(pred, gt)
    return confusion.summary()
