"""Panoptic quality with exactly the COCO panopticapi definition, vectorised with numpy.

Input conventions (those of the COCO panoptic PNG/JSON pairs):

- ``gt_ids`` / ``pred_ids``: ``[H, W]`` integer id maps of the same shape (decoded COCO
  PNGs: ``id = R + 256 G + 256^2 B``). Id ``0`` is VOID (unlabelled) in both maps.
- ``gt_segments``: dicts ``{"id", "category_id", "iscrowd"}`` (``iscrowd`` missing = 0).
  Non-zero ids in ``gt_ids`` without a segment are ignored like panopticapi does: they
  neither match nor count as void. A segment's area is its pixel count in ``gt_ids``
  (equal to the JSON ``area`` of COCO, which panopticapi reads).
- ``pred_segments``: dicts ``{"id", "category_id"}``. Every non-zero id in ``pred_ids``
  must have a segment and every segment must have pixels (panopticapi raises too).
- ``categories``: ``{category_id: {"isthing": 0/1, ...}}`` or the COCO JSON list of
  dicts with ``id`` and ``isthing``. Use the same id space (COCO ids or contiguous ids)
  for segments and categories.

Rules (panopticapi ``pq_compute_single_core``): a gt/pred pair of the same category, gt
not crowd, matches when ``IoU > 0.5`` with the prediction's VOID pixels removed from the
union; unmatched non-crowd gt segments are false negatives; an unmatched prediction is a
false positive unless more than half of it lies on VOID plus the crowd region of its
category (the last crowd segment of that category in ``gt_segments``).

Per image (step 2's depth table and the evaluation's rows): :func:`image_pq`, in one id
convention, the model's contiguous class ids (positions in the dataset's category list):
ground truth goes through :func:`contiguous_segments`, categories through
:func:`contiguous_categories`, predictions are scored as the model outputs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "ImagePQ",
    "PQStat",
    "PQStatCat",
    "PanopticGroundTruth",
    "contiguous_categories",
    "contiguous_segments",
    "image_pq",
    "normalize_categories",
    "pq_single",
]

# Largest id for which a dense lookup table is cheaper than a sorted search.
_LOOKUP_TABLE_MAX_ID = 1 << 16


@dataclass
class PQStatCat:
    """Sums of one category: matched IoU, true/false positives, false negatives."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: PQStatCat) -> PQStatCat:
        return PQStatCat(self.iou + other.iou, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def normalize_categories(categories) -> dict[int, dict]:
    """``{category_id: info}`` from a mapping or from the COCO JSON list of category dicts."""
    if isinstance(categories, Mapping):
        result = {int(k): dict(v) for k, v in categories.items()}
    elif isinstance(categories, Sequence) and not isinstance(categories, (str, bytes)):
        result = {}
        for entry in categories:
            if "id" not in entry:
                raise ValueError(f"category entry {entry!r} has no 'id'; give COCO category dicts or an id->info mapping")
            result[int(entry["id"])] = dict(entry)
    else:
        raise TypeError(f"categories must be a mapping id->info or a list of COCO category dicts, got {type(categories)}")
    for category_id, info in result.items():
        if "isthing" not in info:
            raise ValueError(f"category {category_id} has no 'isthing' flag (1 for things, 0 for stuff)")
    return result


class PQStat:
    """Per-category PQ sums; ``+`` merges images or shards, ``summary`` averages them."""

    def __init__(self, per_category: Mapping[int, PQStatCat] | None = None) -> None:
        self.per_category: dict[int, PQStatCat] = dict(per_category or {})

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.per_category.get(int(category_id), PQStatCat())

    def __add__(self, other: PQStat) -> PQStat:
        if not isinstance(other, PQStat):
            return NotImplemented
        merged = dict(self.per_category)
        for category_id, stat in other.per_category.items():
            merged[category_id] = merged.get(category_id, PQStatCat()) + stat
        return PQStat(merged)

    def __radd__(self, other) -> PQStat:
        # Lets ``sum(stats)`` start from 0.
        if isinstance(other, int) and other == 0:
            return PQStat(self.per_category)
        return NotImplemented

    def __eq__(self, other) -> bool:
        return isinstance(other, PQStat) and self.per_category == other.per_category

    def __repr__(self) -> str:
        return f"PQStat({self.per_category!r})"

    def to_dict(self) -> dict[int, dict]:
        """Plain-Python form for storage (JSON keys become strings; ``from_dict`` accepts both)."""
        return {cid: {"iou": s.iou, "tp": s.tp, "fp": s.fp, "fn": s.fn} for cid, s in self.per_category.items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> PQStat:
        return cls({int(cid): PQStatCat(float(s["iou"]), int(s["tp"]), int(s["fp"]), int(s["fn"])) for cid, s in data.items()})

    def _average(self, categories: dict[int, dict], isthing: bool | None) -> tuple[dict, dict]:
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for category_id, info in categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            stat = self[category_id]
            if stat.tp + stat.fp + stat.fn == 0:
                per_class[category_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
            class_pq = stat.iou / denominator
            class_sq = stat.iou / stat.tp if stat.tp != 0 else 0.0
            class_rq = stat.tp / denominator
            per_class[category_id] = {"pq": class_pq, "sq": class_sq, "rq": class_rq}
            pq += class_pq
            sq += class_sq
            rq += class_rq
        if n == 0:
            # panopticapi divides by zero here; NaN says "no class to average".
            return {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def summary(self, categories) -> dict:
        """PQ/SQ/RQ averaged over the categories with ``tp + fp + fn > 0``.

        Returns:
            ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {id: {"pq", "sq", "rq"}}}``
            as fractions in ``[0, 1]``; a group with no counted class has NaN pq/sq/rq and n 0.
        """
        categories = normalize_categories(categories)
        result = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            result[name], per_class = self._average(categories, isthing)
            if name == "All":
                result["per_class"] = per_class
        return result


def _as_id_map(ids, name: str) -> np.ndarray:
    if hasattr(ids, "detach"):  # torch tensor, without importing torch here
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"{name} must be an [H, W] id map, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must hold integer segment ids, got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} has negative id {ids.min()}; use 0 for VOID and positive segment ids")
    return ids.astype(np.int64, copy=False)


def _segment_ids(segments: Sequence[Mapping], name: str) -> np.ndarray:
    ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
    if ids.size != np.unique(ids).size:
        raise ValueError(f"{name} has duplicate segment ids: {sorted(ids.tolist())}")
    if (ids <= 0).any():
        raise ValueError(f"{name} uses id {int(ids.min())}; id 0 is VOID, segment ids must be positive")
    return ids


def _dense_index(id_map: np.ndarray, segment_ids: np.ndarray, unknown: int) -> np.ndarray:
    """Map ids to ``0`` (void), ``1..S`` (position in ``segment_ids`` + 1) or ``unknown``."""
    flat = id_map.ravel()
    max_id = int(flat.max()) if flat.size else 0
    if max_id <= _LOOKUP_TABLE_MAX_ID:
        table = np.full(max_id + 1, unknown, dtype=np.int64)
        present = segment_ids <= max_id  # listed ids beyond the map's largest have no pixel
        table[segment_ids[present]] = np.arange(1, segment_ids.size + 1)[present]
        table[0] = 0
        return table[flat]
    index = np.full(flat.shape, unknown, dtype=np.int64)
    if segment_ids.size:
        order = np.argsort(segment_ids)
        sorted_ids = segment_ids[order]
        position = np.minimum(np.searchsorted(sorted_ids, flat), sorted_ids.size - 1)
        found = sorted_ids[position] == flat
        index[found] = order[position[found]] + 1
    index[flat == 0] = 0
    return index


class PanopticGroundTruth:
    """One image's ground truth, indexed once so several predictions (step 2's exits) reuse it.

    Args:
        gt_ids: ``[H, W]`` int ground-truth id map, 0 = void.
        gt_segments: list of ``{"id", "category_id", "iscrowd"}``.
        categories: ``{id: {"isthing"}}`` or COCO category list.
    """

    def __init__(self, gt_ids, gt_segments, categories) -> None:
        self.categories = normalize_categories(categories)
        gt = _as_id_map(gt_ids, "gt_ids")
        self.shape = gt.shape
        self.segment_ids = _segment_ids(gt_segments, "gt_segments")
        self.category = np.array([int(s["category_id"]) for s in gt_segments], dtype=np.int64)
        self.crowd = np.array([int(s.get("iscrowd", 0)) == 1 for s in gt_segments], dtype=bool)
        _check_categories(self.category, self.categories, "gt_segments")
        # 0 void, 1..G the segments, G+1 ids without a segment.
        self.index = _dense_index(gt, self.segment_ids, unknown=self.segment_ids.size + 1)

    def pq(self, pred_ids, pred_segments) -> PQStat:
        """PQ sums of a prediction (``[H, W]`` ids, 0 = void; ``{"id", "category_id"}`` segments)."""
        return _pq_against(self, pred_ids, pred_segments)


def _check_categories(category_ids: np.ndarray, categories: dict, label: str) -> None:
    unknown = sorted(set(category_ids.tolist()) - set(categories))
    if unknown:
        raise ValueError(f"{label} use category ids {unknown} that are not in categories")


def pq_single(pred_ids, pred_segments, gt_ids, gt_segments, categories) -> PQStat:
    """PQ sums of one image (see the module docstring for the conventions).

    Args:
        pred_ids: ``[H, W]`` int predicted id map, 0 = void.
        pred_segments: list of ``{"id", "category_id"}``.
        gt_ids: ``[H, W]`` int ground-truth id map, 0 = void.
        gt_segments: list of ``{"id", "category_id", "iscrowd"}``.
        categories: ``{id: {"isthing"}}`` or COCO category list.

    Returns:
        the image's :class:`PQStat`; ``pq_single(...).summary(categories)["All"]["pq"]`` is
        the per-image PQ (averaged over the classes present in the image).
    """
    return PanopticGroundTruth(gt_ids, gt_segments, categories).pq(pred_ids, pred_segments)


def _pq_against(truth: PanopticGroundTruth, pred_ids, pred_segments) -> PQStat:
    pred = _as_id_map(pred_ids, "pred_ids")
    if pred.shape != truth.shape:
        raise ValueError(f"pred_ids {pred.shape} and gt_ids {truth.shape} differ in shape; resize the prediction first")
    pred_seg_ids = _segment_ids(pred_segments, "pred_segments")
    pred_cat = np.array([int(s["category_id"]) for s in pred_segments], dtype=np.int64)
    _check_categories(pred_cat, truth.categories, "pred_segments")
    gt_seg_ids, gt_cat, gt_crowd, gt_index = truth.segment_ids, truth.category, truth.crowd, truth.index

    num_gt, num_pred = gt_seg_ids.size, pred_seg_ids.size
    pred_index = _dense_index(pred, pred_seg_ids, unknown=-1)
    if (pred_index < 0).any():
        stray = sorted(np.unique(pred.ravel()[pred_index < 0]).tolist())
        raise ValueError(f"pred_ids has segment ids {stray[:20]} with no entry in pred_segments")
    counts = np.bincount(gt_index * (num_pred + 1) + pred_index, minlength=(num_gt + 2) * (num_pred + 1))
    counts = counts.reshape(num_gt + 2, num_pred + 1)

    pred_area = counts[:, 1:].sum(0)  # [P]
    if (pred_area == 0).any():
        missing = pred_seg_ids[pred_area == 0].tolist()
        raise ValueError(f"pred_segments {missing} have no pixel in pred_ids; drop empty segments")
    gt_area = counts[1 : num_gt + 1].sum(1)  # [G]
    intersection = counts[1 : num_gt + 1, 1:]  # [G, P]
    pred_on_void = counts[0, 1:]  # [P]

    union = pred_area[None, :] + gt_area[:, None] - intersection - pred_on_void[None, :]
    iou = intersection / np.maximum(union, 1)
    matched = (intersection > 0) & (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None] & (iou > 0.5)

    stats: dict[int, PQStatCat] = {}

    def stat(category_id: int) -> PQStatCat:
        return stats.setdefault(int(category_id), PQStatCat())

    gt_matched, pred_matched = np.nonzero(matched)
    for g in np.argsort(gt_seg_ids[gt_matched], kind="stable"):  # panopticapi sums by ascending gt id
        entry = stat(gt_cat[gt_matched[g]])
        entry.tp += 1
        entry.iou += float(iou[gt_matched[g], pred_matched[g]])

    is_gt_matched = matched.any(1)
    crowd_of_category: dict[int, int] = {}
    for g in range(num_gt):
        if is_gt_matched[g]:
            continue
        if gt_crowd[g]:
            crowd_of_category[int(gt_cat[g])] = g
            continue
        stat(gt_cat[g]).fn += 1

    is_pred_matched = matched.any(0)
    for p in np.nonzero(~is_pred_matched)[0]:
        excused = int(pred_on_void[p])
        crowd = crowd_of_category.get(int(pred_cat[p]))
        if crowd is not None:
            excused += int(intersection[crowd, p])
        if excused / pred_area[p] > 0.5:
            continue
        stat(pred_cat[p]).fp += 1
    return PQStat(stats)


# ----------------------------------------------------------------------------- per image, contiguous ids


def contiguous_categories(categories: Sequence) -> dict[int, dict]:
    """A dataset's categories in contiguous order (its metadata's ``categories``: objects with an
    ``isthing`` attribute, or dicts with an ``"isthing"`` key) -> ``{i: {"isthing": 0/1}}``."""
    def isthing(category) -> int:
        return int(category["isthing"] if isinstance(category, Mapping) else category.isthing)

    return {i: {"isthing": isthing(c)} for i, c in enumerate(categories)}


def contiguous_segments(segments: Sequence[Mapping], to_contiguous: Mapping[int, int]) -> list[dict]:
    """Ground-truth segments ``{"id", "category_id" (dataset id), "iscrowd"}`` -> ``{"id",
    "category_id" (contiguous id), "iscrowd"}`` (``to_contiguous``: the metadata's
    ``dataset_id_to_contiguous``)."""
    out = []
    for segment in segments:
        category = int(segment["category_id"])
        if category not in to_contiguous:
            raise ValueError(f"segment {segment['id']} has category_id {category}, which is not among the dataset's "
                             f"categories {sorted(to_contiguous)}; fix the annotation or the category list")
        out.append({"id": int(segment["id"]), "category_id": int(to_contiguous[category]),
                    "iscrowd": int(segment.get("iscrowd", 0))})
    return out


@dataclass(frozen=True)
class ImagePQ:
    """One image's PQ: its sums (``stat``, mergeable into the dataset PQ with ``+``) and their
    averages over the image's classes (NaN where a group has no class: nothing to get wrong)."""

    stat: PQStat
    pq: float
    sq: float
    rq: float
    pq_things: float
    pq_stuff: float

    def averages(self) -> dict[str, float]:
        """``{"pq", "sq", "rq", "pq_things", "pq_stuff"}``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stat"}


def image_pq(truth: PanopticGroundTruth, pred_ids, pred_segments) -> ImagePQ:
    """One prediction of one image scored against its indexed ground truth.

    Args:
        truth: the image's ground truth with contiguous category ids (:func:`contiguous_segments`)
            and categories (:func:`contiguous_categories`).
        pred_ids: ``[H, W]`` int predicted id map at the ground truth's size, 0 = void.
        pred_segments: ``{"id", "category_id" (contiguous, as the model predicts)}``.
    """
    stat = truth.pq(pred_ids, pred_segments)
    summary = stat.summary(truth.categories)
    return ImagePQ(stat, summary["All"]["pq"], summary["All"]["sq"], summary["All"]["rq"],
                   summary["Things"]["pq"], summary["Stuff"]["pq"])
