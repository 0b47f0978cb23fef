"""COCO panoptic format: ``panoptic_*.json`` + RGB-encoded id PNGs (also Cityscapes).

Ids: id = R + 256 G + 256^2 B; 0 is void. Category ids need not be contiguous
(Cityscapes uses 7..33); the metadata maps them to contiguous ids.

EXIF: the image is turned upright. A PNG the size of the stored (un-rotated) pixels
was drawn on them and gets the same transpose; a PNG that matches only the upright
size is already upright and is kept as it is.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Callable

import numpy as np

from ecom2f.data import fileio
from ecom2f.data.base import DEFAULT_MAX_BAD_FRACTION, SegmentationDataset
from ecom2f.data.image_io import decode_image, decode_panoptic_png, transpose_id_map
from ecom2f.data.metadata import DatasetMetadata, categories_from_coco
from ecom2f.data.problems import DataProblemError, Problem, ProblemKind
from ecom2f.data.sample import build_sample


def load_json(path: str, what: str) -> dict:
    try:
        return json.loads(fileio.read_bytes(path))
    except FileNotFoundError as error:
        raise DataProblemError(
            Problem(ProblemKind.MISSING_ANNOTATION_FILE, str(path), f"{what} file does not exist")
        ) from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataProblemError(Problem(ProblemKind.BAD_ANNOTATION, str(path), f"not valid JSON ({error})")) from error


class ImageLocator:
    """Finds image files under a root: flat (COCO) or in per-city folders (Cityscapes)."""

    def __init__(self, root: str):
        self.root = str(root)
        self._listing = fileio.list_files(self.root)

    def find(self, file_name: str) -> str | None:
        if file_name in self._listing:
            return fileio.join(self.root, file_name)
        path = fileio.join(self.root, file_name)
        if "/" in file_name and fileio.exists(path):
            return path
        if "_" in file_name:  # Cityscapes: <root>/<city>/<city>_xxx_leftImg8bit.png
            in_city = fileio.join(self.root, file_name.split("_")[0], file_name)
            if fileio.exists(in_city):
                return in_city
        return None


class CocoPanopticDataset(SegmentationDataset):
    def __init__(
        self,
        image_root: str,
        json_file: str,
        png_root: str,
        strict: bool = True,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        transform: Callable[[dict], dict] | None = None,
        name: str | None = None,
        check_only: bool = False,
    ):
        raw = load_json(str(json_file), "panoptic annotation")
        for key in ("images", "annotations", "categories"):
            if key not in raw:
                raise DataProblemError(
                    Problem(ProblemKind.BAD_ANNOTATION, str(json_file), f"no {key!r} list: not a COCO panoptic JSON")
                )
        metadata = DatasetMetadata(name or os.path.basename(str(json_file)), categories_from_coco(raw["categories"]))
        super().__init__(metadata, strict, max_bad_fraction, transform, check_only)
        self.image_root, self.png_root, self.json_file = str(image_root), str(png_root), str(json_file)
        images = ImageLocator(self.image_root)
        pngs = fileio.list_files(self.png_root)
        image_infos = {}
        for info in raw["images"]:
            image_infos.setdefault(info["id"], info)
        known = metadata.dataset_id_to_contiguous
        records, problems_per_record, seen_images = [], [], Counter()
        for ann in raw["annotations"]:
            seen_images[ann.get("image_id")] += 1
            record, problems = self._record(ann, image_infos, images, pngs, known, seen_images)
            records.append(record)
            problems_per_record.append(problems)
        self._set_records(records, problems_per_record)

    def _record(self, ann: dict, image_infos: dict, images: ImageLocator, pngs: set[str], known: dict,
                seen_images: Counter) -> tuple[dict, list[Problem]]:
        """One annotation -> its record and the problems found in it (files, ids, segments)."""
        problems: list[Problem] = []
        image_id = ann.get("image_id")
        info = image_infos.get(image_id)
        png_name = ann.get("file_name", "")
        file = png_name or f"image_id={image_id}"
        if info is None:
            problems.append(Problem(ProblemKind.BAD_ANNOTATION, file, f"image_id {image_id} is not in 'images'"))
            info = {"file_name": os.path.splitext(png_name)[0] + ".jpg"}
        if seen_images[image_id] > 1:
            problems.append(Problem(ProblemKind.DUPLICATE_ID, file, f"image_id {image_id} annotated twice"))
        image_path = images.find(info["file_name"])
        if image_path is None:
            problems.append(Problem(ProblemKind.MISSING_IMAGE, info["file_name"], f"not found under {self.image_root}"))
        if png_name not in pngs:
            problems.append(
                Problem(ProblemKind.MISSING_ANNOTATION_FILE, file, f"panoptic PNG not found under {self.png_root}")
            )
        segments = _checked_segments(ann.get("segments_info", []), file, known, problems)
        record = {
            "image_id": image_id,
            "image_path": image_path,
            "file_name": info["file_name"],
            "png_path": fileio.join(self.png_root, png_name),
            "size": (info.get("height"), info.get("width")),
            "segments_info": segments,
            "difficulty": ann.get("difficulty", info.get("difficulty")),
        }
        return record, problems

    def _load_record(self, record: dict, problems: list[Problem]) -> dict:
        file = record["file_name"]
        try:
            image_bytes = fileio.read_bytes(record["image_path"])
        except FileNotFoundError as error:
            raise DataProblemError(Problem(ProblemKind.MISSING_IMAGE, file, "the file disappeared")) from error
        decoded = decode_image(image_bytes, file)
        problems.extend(decoded.problems)
        png_file = os.path.basename(record["png_path"])
        try:
            id_map = decode_panoptic_png(fileio.read_bytes(record["png_path"]), png_file)
        except FileNotFoundError as error:
            raise DataProblemError(Problem(ProblemKind.MISSING_ANNOTATION_FILE, png_file, "the file disappeared")) from error
        upright = decoded.rgb.shape[:2]
        if id_map.shape == decoded.stored_size:
            id_map = transpose_id_map(id_map, decoded.transpose)
        elif id_map.shape != upright:
            raise DataProblemError(
                Problem(
                    ProblemKind.SIZE_MISMATCH,
                    png_file,
                    f"PNG is {id_map.shape[1]}x{id_map.shape[0]} (WxH) but image {file} is {upright[1]}x{upright[0]}",
                )
            )
        json_size = record["size"]
        if json_size[0] is not None and tuple(json_size) not in (tuple(upright), tuple(decoded.stored_size)):
            raise DataProblemError(
                Problem(
                    ProblemKind.SIZE_MISMATCH,
                    file,
                    f"JSON says {json_size[1]}x{json_size[0]} (WxH) but the image is {upright[1]}x{upright[0]}",
                )
            )
        present, counts = np.unique(id_map, return_counts=True)
        area = dict(zip(present.tolist(), counts.tolist()))
        listed = {int(s["id"]) for s in record["segments_info"]}
        extra = sorted(set(area) - listed - {0})
        if extra:
            problems.append(
                Problem(
                    ProblemKind.SEGMENT_NOT_IN_JSON,
                    png_file,
                    f"ids {extra[:10]} ({len(extra)} in all, {sum(area[i] for i in extra)} px) are in the PNG "
                    f"but not in segments_info",
                )
            )
        segments = []
        for segment in record["segments_info"]:
            pixels = area.get(int(segment["id"]), 0)
            if pixels == 0:
                if segment.get("area", 1) != 0:
                    problems.append(
                        Problem(
                            ProblemKind.SEGMENT_NOT_IN_PNG,
                            png_file,
                            f"segment {segment['id']} (area {segment.get('area')}) has no pixel in the PNG",
                        )
                    )
                continue  # a segment without pixels cannot be a target
            if "area" in segment and int(segment["area"]) != pixels:
                problems.append(
                    Problem(
                        ProblemKind.AREA_MISMATCH,
                        png_file,
                        f"segment {segment['id']}: JSON area {segment['area']} but {pixels} px in the PNG",
                    )
                )
            segments.append(segment)
        sample = build_sample(decoded.rgb, id_map, segments, self.metadata, record["image_id"], file)
        if record.get("difficulty") is not None:
            sample["difficulty"] = float(record["difficulty"])
        return sample


def _checked_segments(segments_info: list[dict], file: str, known: dict, problems: list[Problem]) -> list[dict]:
    """The image's segments; appends a problem for each bad id, unknown category or empty segment."""
    segments, seen_ids = [], set()
    for segment in segments_info:
        segment_id = int(segment.get("id", 0))
        if segment_id <= 0:
            problems.append(Problem(ProblemKind.BAD_ANNOTATION, file, f"segment id {segment_id} (0 is void)"))
        elif segment_id in seen_ids:
            problems.append(Problem(ProblemKind.DUPLICATE_ID, file, f"segment id {segment_id} appears twice"))
        if segment.get("category_id") not in known:
            problems.append(
                Problem(
                    ProblemKind.UNKNOWN_CATEGORY,
                    file,
                    f"segment {segment_id} has category_id {segment.get('category_id')}, "
                    f"not in the {len(known)} categories",
                )
            )
        if segment.get("area", 1) == 0:
            problems.append(Problem(ProblemKind.ZERO_AREA_SEGMENT, file, f"segment {segment_id} has area 0"))
        seen_ids.add(segment_id)
        segments.append(segment)
    if not segments:
        problems.append(Problem(ProblemKind.EMPTY_IMAGE, file, "no segments: the whole image is void"))
    return segments
