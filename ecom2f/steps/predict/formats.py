"""Predictions in the formats other tools read.

- panoptic: a COCO panoptic annotation (``segments_info`` with dataset category ids) and its PNG
  (``id = R + 256 G + 256^2 B``), as panopticapi and ``ecom2f pq`` read them;
- instances: COCO results, one dict per detection with an RLE ``segmentation`` (``counts`` as
  text), as pycocotools' ``COCO.loadRes`` / ``COCOeval`` read them;
- semantic: a grey PNG of contiguous class ids (8-bit below 256 classes, else 16-bit).

:func:`compact` turns a :class:`~ecom2f.steps.predict.predictor.Prediction` into what crosses
from the model to the writer: small integer maps and RLE masks, never mask logits.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ecom2f.data.image_io import id_to_rgb
from ecom2f.steps.packing import compact_labels

__all__ = ["compact", "instance_records", "panoptic_png_bytes", "panoptic_record", "png_bytes", "semantic_png_bytes"]


def compact(prediction) -> dict:
    """A Prediction as host values of about a byte per pixel: ``depth, budget, encoder_gflops,
    total_gflops, seconds, size`` and, per task run, ``ids``/``segments``, ``semantic``,
    ``instances`` (``rle`` list, ``scores``, ``classes``)."""
    out = {"depth": prediction.depth, "budget": prediction.budget, "encoder_gflops": prediction.encoder_gflops,
           "total_gflops": prediction.total_gflops, "seconds": prediction.seconds, "size": tuple(prediction.size)}
    if prediction.panoptic is not None:
        ids, segments = prediction.panoptic
        out["ids"] = compact_labels(ids.numpy())
        out["segments"] = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "isthing": bool(s["isthing"])}
                           for s in segments]
    if prediction.semantic is not None:
        out["semantic"] = compact_labels(prediction.semantic.numpy())
    if prediction.instances is not None:
        found = prediction.instances
        out["instances"] = {"rle": encode_masks(found.masks.numpy()), "scores": found.scores.numpy().astype(float),
                            "classes": found.classes.numpy().astype(np.int64)}
    return out


def encode_masks(masks: np.ndarray) -> list[dict]:
    """bool ``[M, H, W]`` -> M COCO RLEs with text ``counts`` (JSON-ready)."""
    from pycocotools import mask as mask_utils

    if not len(masks):
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]


def panoptic_record(image_id, file_name: str, ids: np.ndarray, segments: list[dict], categories: list[dict]) -> dict:
    """COCO panoptic annotation of one image: segments with dataset category ids, area and bbox."""
    infos = []
    for segment in segments:
        mask = ids == segment["id"]
        area = int(mask.sum())
        if area == 0:
            continue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        infos.append({"id": int(segment["id"]), "category_id": categories[segment["category_id"]]["id"],
                      "iscrowd": 0, "area": area, "bbox": bbox, "isthing": int(bool(segment["isthing"]))})
    return {"image_id": image_id, "file_name": file_name, "segments_info": infos}


def instance_records(image_id, instances: dict, categories: list[dict]) -> list[dict]:
    """COCO results of one image from :func:`compact`'s ``instances``."""
    return [{"image_id": image_id, "category_id": categories[int(c)]["id"], "segmentation": rle, "score": float(s)}
            for rle, s, c in zip(instances["rle"], instances["scores"], instances["classes"])]


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 ``[H, W]`` / ``[H, W, 3]`` or uint16 ``[H, W]`` array as PNG bytes (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def panoptic_png_bytes(ids: np.ndarray) -> bytes:
    """``[H, W]`` segment ids as a COCO panoptic RGB PNG."""
    return png_bytes(id_to_rgb(ids))


def semantic_png_bytes(labels: np.ndarray) -> bytes:
    """``[H, W]`` class ids as a grey PNG: 8-bit when they fit, else 16-bit."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > 255:
        return png_bytes(labels.astype(np.uint16))
    return png_bytes(labels.astype(np.uint8))
