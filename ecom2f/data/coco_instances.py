"""COCO instances format (polygons, RLE, crowd RLE) through pycocotools.

Instance masks may overlap, so the sample's masks are the full instance masks; its
``id_map`` paints them in annotation order (later on top) with ids 1..K, and each
``segments_info`` entry keeps the COCO annotation id as ``ann_id``.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable

import numpy as np
from pycocotools import mask as mask_utils

from ecom2f.data import fileio
from ecom2f.data.base import DEFAULT_MAX_BAD_FRACTION, SegmentationDataset
from ecom2f.data.coco_panoptic import ImageLocator, load_json
from ecom2f.data.image_io import decode_image, transpose_id_map
from ecom2f.data.metadata import DatasetMetadata, categories_from_coco
from ecom2f.data.problems import DataProblemError, Problem, ProblemKind
from ecom2f.data.sample import build_sample


def _rasterize(segmentation, height: int, width: int) -> np.ndarray:
    """bool [H, W] of a polygon list, an uncompressed RLE (crowd) or a compressed RLE."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def _segmentation_problem(segmentation) -> str | None:
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty polygon list"
        bad = [len(p) for p in segmentation if len(p) < 6 or len(p) % 2]
        return f"polygons with {bad} coordinates (need an even number >= 6)" if bad else None
    if isinstance(segmentation, dict) and {"counts", "size"} <= set(segmentation):
        return None
    return f"segmentation of type {type(segmentation).__name__} is neither polygons nor RLE"


class CocoInstancesDataset(SegmentationDataset):
    def __init__(
        self,
        image_root: str,
        json_file: str,
        strict: bool = True,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        transform: Callable[[dict], dict] | None = None,
        name: str | None = None,
        check_only: bool = False,
    ):
        raw = load_json(str(json_file), "instances annotation")
        for key in ("images", "annotations", "categories"):
            if key not in raw:
                raise DataProblemError(
                    Problem(ProblemKind.BAD_ANNOTATION, str(json_file), f"no {key!r} list: not a COCO instances JSON")
                )
        metadata = DatasetMetadata(
            name or os.path.basename(str(json_file)), categories_from_coco(raw["categories"], default_isthing=True)
        )
        super().__init__(metadata, strict, max_bad_fraction, transform, check_only)
        self.image_root, self.json_file = str(image_root), str(json_file)
        images = ImageLocator(self.image_root)
        known = metadata.dataset_id_to_contiguous

        ann_ids = Counter(a.get("id") for a in raw["annotations"])
        per_image: dict = {}
        for ann in raw["annotations"]:
            per_image.setdefault(ann.get("image_id"), []).append(ann)
        records, problems_per_record, seen = [], [], set()
        for info in raw["images"]:
            problems: list[Problem] = []
            file = info.get("file_name", f"image_id={info['id']}")
            if info["id"] in seen:
                problems.append(Problem(ProblemKind.DUPLICATE_ID, file, f"image id {info['id']} listed twice"))
            seen.add(info["id"])
            image_path = images.find(file)
            if image_path is None:
                problems.append(Problem(ProblemKind.MISSING_IMAGE, file, f"not found under {self.image_root}"))
            annotations = []
            for ann in per_image.get(info["id"], []):
                if ann_ids[ann.get("id")] > 1:
                    problems.append(Problem(ProblemKind.DUPLICATE_ID, file, f"annotation id {ann.get('id')} is not unique"))
                if ann.get("category_id") not in known:
                    problems.append(
                        Problem(
                            ProblemKind.UNKNOWN_CATEGORY,
                            file,
                            f"annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                            f"not in the {len(known)} categories",
                        )
                    )
                reason = _segmentation_problem(ann.get("segmentation"))
                if reason:
                    problems.append(Problem(ProblemKind.BAD_ANNOTATION, file, f"annotation {ann.get('id')}: {reason}"))
                    continue
                if ann.get("area", 1) == 0:
                    problems.append(Problem(ProblemKind.ZERO_AREA_SEGMENT, file, f"annotation {ann.get('id')} has area 0"))
                    continue
                annotations.append(ann)
            if not annotations:
                problems.append(Problem(ProblemKind.EMPTY_IMAGE, file, "no annotations"))
            records.append(
                {
                    "image_id": info["id"],
                    "image_path": image_path,
                    "file_name": file,
                    "size": (info.get("height"), info.get("width")),
                    "annotations": annotations,
                }
            )
            problems_per_record.append(problems)
        self._set_records(records, problems_per_record)

    def _load_record(self, record: dict, problems: list[Problem]) -> dict:
        file = record["file_name"]
        try:
            decoded = decode_image(fileio.read_bytes(record["image_path"]), file)
        except FileNotFoundError as error:
            raise DataProblemError(Problem(ProblemKind.MISSING_IMAGE, file, "the file disappeared")) from error
        problems.extend(decoded.problems)
        height, width = record["size"]
        if height is None:
            height, width = decoded.stored_size
        if (height, width) not in (decoded.stored_size, decoded.rgb.shape[:2]):
            raise DataProblemError(
                Problem(
                    ProblemKind.SIZE_MISMATCH,
                    file,
                    f"JSON says {width}x{height} (WxH) but the image is {decoded.rgb.shape[1]}x{decoded.rgb.shape[0]}",
                )
            )
        # Annotations drawn on the stored pixels turn with the image.
        turn = decoded.transpose if (height, width) == decoded.stored_size else None
        masks, segments = [], []
        for ann in record["annotations"]:
            mask = _rasterize(ann["segmentation"], height, width)
            mask = transpose_id_map(mask.astype(np.int64), turn).astype(bool)
            if not mask.any():
                problems.append(Problem(ProblemKind.ZERO_AREA_SEGMENT, file, f"annotation {ann['id']} covers no pixel"))
                continue
            masks.append(mask)
            segments.append(
                {
                    "id": len(segments) + 1,
                    "ann_id": ann["id"],
                    "category_id": ann["category_id"],
                    "iscrowd": int(ann.get("iscrowd", 0)),
                    "area": int(mask.sum()),
                }
            )
        shape = decoded.rgb.shape[:2]
        id_map = np.zeros(shape, dtype=np.int64)
        for segment, mask in zip(segments, masks):
            id_map[mask] = segment["id"]
        stacked = np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool)
        return build_sample(decoded.rgb, id_map, segments, self.metadata, record["image_id"], file, masks=stacked)

