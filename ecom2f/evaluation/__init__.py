"""Evaluation metrics: COCO panoptic quality, COCO mask AP, semantic mIoU."""

from ecom2f.evaluation.coco_panoptic_files import pq_compute_files, read_panoptic_png, write_panoptic_png
from ecom2f.evaluation.mask_ap import MaskAPEvaluator, mask_ap
from ecom2f.evaluation.panoptic_quality import (
    ImagePQ,
    PanopticGroundTruth,
    PQStat,
    PQStatCat,
    contiguous_categories,
    contiguous_segments,
    image_pq,
    normalize_categories,
    pq_single,
)
from ecom2f.evaluation.semantic import SemanticConfusion, semantic_metrics

__all__ = [
    "ImagePQ",
    "MaskAPEvaluator",
    "PQStat",
    "PQStatCat",
    "PanopticGroundTruth",
    "SemanticConfusion",
    "contiguous_categories",
    "contiguous_segments",
    "image_pq",
    "mask_ap",
    "normalize_categories",
    "pq_compute_files",
    "pq_single",
    "read_panoptic_png",
    "semantic_metrics",
    "write_panoptic_png",
]
