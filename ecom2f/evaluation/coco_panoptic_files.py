"""COCO panoptic results on disk (JSON + PNG folders) -> PQ, as panopticapi's ``pq_compute``.

A drop-in for ``panopticapi.evaluation.pq_compute`` (not on PyPI): same inputs, same
pairing of predictions to ground truth by ``image_id``, categories from the gt JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ecom2f.errors import BadInputError, MissingFileError
from ecom2f.evaluation.panoptic_quality import PQStat, pq_single

__all__ = ["read_panoptic_png", "write_panoptic_png", "pq_compute_files", "format_pq_table"]


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """``[H, W]`` int64 segment ids of a COCO panoptic PNG (``id = R + 256 G + 256^2 B``)."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def write_panoptic_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write ``[H, W]`` ids (``0 <= id < 256^3``) as a COCO panoptic PNG (temporary name, then rename)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError(f"panoptic ids must be [H, W] in [0, 256^3), got shape {ids.shape} range "
                         f"[{ids.min(initial=0)}, {ids.max(initial=0)}]")
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(descriptor)
    try:
        Image.fromarray(rgb).save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pq_compute_files(
    gt_json: str | os.PathLike,
    pred_json: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
) -> dict:
    """PQ summary of a COCO panoptic prediction set (folders default to the JSON path without ``.json``).

    Returns:
        :meth:`PQStat.summary` of all images together.
    """
    gt_json, pred_json = Path(gt_json), Path(pred_json)
    gt_folder = Path(gt_folder) if gt_folder is not None else gt_json.with_suffix("")
    pred_folder = Path(pred_folder) if pred_folder is not None else pred_json.with_suffix("")
    for folder in (gt_folder, pred_folder):
        if not folder.is_dir():
            raise MissingFileError(f"segmentation folder {folder} does not exist; pass it with --gt-folder / --pred-folder")
    gt_meta = json.loads(gt_json.read_text())
    pred_meta = json.loads(pred_json.read_text())
    categories = gt_meta["categories"]
    predictions = {ann["image_id"]: ann for ann in pred_meta["annotations"]}
    total = PQStat()
    for gt_ann in gt_meta["annotations"]:
        pred_ann = predictions.get(gt_ann["image_id"])
        if pred_ann is None:
            raise BadInputError(f"no prediction for the image with id {gt_ann['image_id']} in {pred_json}")
        try:
            total += pq_single(
                read_panoptic_png(pred_folder / pred_ann["file_name"]),
                pred_ann["segments_info"],
                read_panoptic_png(gt_folder / gt_ann["file_name"]),
                gt_ann["segments_info"],
                categories,
            )
        except ValueError as error:
            raise ValueError(f"image {gt_ann['image_id']}: {error}") from error
    return total.summary(categories)


def format_pq_table(summary: dict) -> str:
    """panopticapi's printed table (percent)."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
    for name in ("All", "Things", "Stuff"):
        row = summary[name]
        lines.append(f"{name:10s}| {100 * row['pq']:5.1f}  {100 * row['sq']:5.1f}  {100 * row['rq']:5.1f} {row['n']:5d}")
    return "\n".join(lines)
