"""From per-image rows to dataset metrics: fixed depths, gates, the oracle and its curve.

Rows (one per image and variant) come from :class:`ecom2f.steps.evaluate.stages.EvalScorer`.
Dataset PQ is COCO's: PQ sums of all images merged, then averaged over categories (not the
mean of per-image PQs, which is also reported as ``mean_image_pq`` because it is what
step 3's table-only estimate measures).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ecom2f import tradeoff
from ecom2f.evaluation import MaskAPEvaluator, SemanticConfusion
from ecom2f.steps.evaluate.stages import merge_pq

__all__ = ["ORACLE_BETAS", "mask_ap_of", "miou_of", "oracle_rows", "summarize"]

_FLOAT_COLUMNS = ("image_pq", "seconds", "encoder_gflops", "total_gflops", "difficulty")

# Per-layer penalties of the oracle curve (ecom2f.tradeoff's oracle with layer costs).
ORACLE_BETAS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0)


def _fixed_grid(fixed: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(depths [D] ascending, row [images, D])``: the position in ``fixed`` of each image's row at
    each depth, images in ascending id; raises unless every image has exactly one row per depth."""
    image_ids, image_index = np.unique(fixed["image_id"].to_numpy(), return_inverse=True)
    depths, depth_index = np.unique(fixed["depth"].to_numpy(), return_inverse=True)
    cell = image_index * len(depths) + depth_index
    counts = np.bincount(cell, minlength=len(image_ids) * len(depths))
    if (counts != 1).any():
        bad = int(np.flatnonzero(counts != 1)[0])
        raise ValueError(
            f"the oracle needs each image once at every fixed depth: image {image_ids[bad // len(depths)]} has "
            f"{counts[bad]} rows at depth {depths[bad % len(depths)]}; rerun the evaluation"
        )
    row = np.empty(len(cell), np.int64)
    row[cell] = np.arange(len(cell))
    return depths, row.reshape(len(image_ids), len(depths))


def oracle_rows(rows: pd.DataFrame, beta: float = 0.0, name: str | None = None) -> pd.DataFrame:
    """Per image, the fixed-depth row maximising ``image_pq - beta * depth`` (:func:`ecom2f.tradeoff.oracle`:
    ties go to fewer layers, an undefined per-image PQ counts as ``tradeoff.NAN_QUALITY``).

    Returns those rows (one per image, ascending image id), renamed to the ``oracle`` kind
    (``name`` default ``oracle`` at beta 0, else ``oracle_beta=<beta>``).
    """
    fixed = rows[rows["kind"] == "fixed"]
    if fixed.empty:
        raise ValueError("the oracle needs fixed-depth rows; evaluation.depths must list at least one depth")
    depths, row = _fixed_grid(fixed)
    quality = fixed["image_pq"].to_numpy(np.float64)[row]  # [images, depths]
    best = tradeoff.oracle(quality, tradeoff.layer_costs(depths, len(row)), beta).index
    label = name or ("oracle" if beta == 0 else f"oracle_beta={beta:g}")
    # The oracle needs every depth's prediction: it has no time of its own.
    return fixed.iloc[row[np.arange(len(row)), best]].assign(
        variant=label, kind="oracle" if beta == 0 else "oracle_curve", seconds=math.nan)


def miou_of(rows: pd.DataFrame, num_classes: int) -> float:
    """mIoU of the images in ``rows`` from their confusion cells (``semantic`` JSON:
    :func:`ecom2f.steps.evaluate.stages.semantic_cells`), summed into one ``[K, K]`` matrix."""
    records = [json.loads(text) for text in rows["semantic"]]
    flat = np.zeros(num_classes * num_classes, np.int64)
    if records:
        np.add.at(flat, np.concatenate([np.asarray(r["cells"], np.int64) for r in records]),
                  np.concatenate([np.asarray(r["counts"], np.int64) for r in records]))
    confusion = SemanticConfusion(num_classes, ignore_index=-1)  # ignored pixels never reached the cells
    confusion.matrix = flat.reshape(num_classes, num_classes)
    return float(confusion.summary()["mIoU"])


def _masks(size: list[int], counts: list[str]) -> np.ndarray:
    """bool ``[M, H, W]`` from COCO RLE ``counts`` strings of masks of ``size [H, W]``."""
    from pycocotools import mask as mask_utils

    if not counts:
        return np.zeros((0, *size), dtype=bool)
    rles = [{"size": list(size), "counts": c.encode("ascii")} for c in counts]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def mask_ap_of(rows: pd.DataFrame, thing_classes: Sequence[int]) -> float:
    """COCO mask AP of the images in ``rows`` (their ``instances`` JSON:
    :func:`ecom2f.steps.evaluate.stages.instance_record`), over the ``thing_classes``."""
    evaluator = MaskAPEvaluator(category_ids=list(thing_classes))
    for text in rows["instances"]:
        record = json.loads(text)
        detections, truth = record["detections"], record["truth"]
        evaluator.update(
            {"masks": _masks(record["size"], detections["counts"]), "scores": np.asarray(detections["scores"]),
             "classes": np.asarray(detections["classes"], np.int64)},
            {"masks": _masks(record["size"], truth["counts"]), "classes": np.asarray(truth["classes"], np.int64),
             "iscrowd": np.asarray(truth["iscrowd"], np.int64)},
        )
    return float(evaluator.compute()["AP"])


def _variant_metrics(group: pd.DataFrame, categories: dict, num_things: int, tasks: Sequence[str]) -> dict:
    summary = merge_pq(group["pq_stat"]).summary(categories)
    metrics = {
        "images": len(group),
        "pq": summary["All"]["pq"],
        "sq": summary["All"]["sq"],
        "rq": summary["All"]["rq"],
        "pq_things": summary["Things"]["pq"],
        "pq_stuff": summary["Stuff"]["pq"],
        "mean_image_pq": float(tradeoff.defined_quality(group["image_pq"].to_numpy(np.float64)).mean()),
        "mean_layers": float(group["depth"].mean()),
        "mean_encoder_gflops": float(group["encoder_gflops"].mean()),
        "mean_total_gflops": float(group["total_gflops"].mean()),
        "seconds_per_image": float(group["seconds"].mean()),
    }
    if "semantic" in tasks and "semantic" in group:
        metrics["miou"] = miou_of(group, len(categories))
    if "instance" in tasks and "instances" in group:
        metrics["mask_ap"] = mask_ap_of(group, sorted(k for k, v in categories.items() if v.get("isthing")))
    return metrics


def summarize(rows: pd.DataFrame, categories: dict, tasks: Sequence[str] = ("panoptic",),
              num_things: int = 0, estimates: dict | None = None, oracle: bool = True) -> pd.DataFrame:
    """One row per variant (fixed depths, gates, oracle, oracle curve) with the dataset metrics.

    ``estimates``: gate name -> step 3's table-only validation metrics (``pq``, ``mean_layers``,
    ...); they are put beside the gate as ``estimate_*`` with ``pq_minus_estimate``.
    """
    # Rows that went through Arrow may hold nullable dtypes (pd.NA); plain floats keep NaN semantics.
    rows = rows.astype({c: "float64" for c in _FLOAT_COLUMNS if c in rows.columns})
    parts = [rows]
    if oracle:
        parts.append(oracle_rows(rows))
        parts += [oracle_rows(rows, beta) for beta in ORACLE_BETAS if beta > 0]
    everything = pd.concat(parts, ignore_index=True)
    records = []
    for (kind, variant), group in everything.groupby(["kind", "variant"], sort=False):
        record = {"kind": kind, "variant": variant, **_variant_metrics(group, categories, num_things, tasks)}
        estimate = (estimates or {}).get(variant) if kind == "gate" else None
        if estimate:
            for key, value in estimate.items():
                record[f"estimate_{key}"] = value
            if "pq" in estimate:
                record["pq_minus_estimate"] = record["pq"] - estimate["pq"]
                record["mean_image_pq_minus_estimate"] = record["mean_image_pq"] - estimate["pq"]
        records.append(record)
    order = {"fixed": 0, "oracle": 1, "gate": 2, "oracle_curve": 3}
    table = pd.DataFrame.from_records(records)
    return table.sort_values(by=["kind", "mean_layers"], key=lambda c: c.map(order) if c.name == "kind" else c,
                             kind="mergesort").reset_index(drop=True)
