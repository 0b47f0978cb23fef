"""Semantic segmentation format: an image and a one-channel label PNG per image.

Labels are contiguous class indices ``0..num_classes-1`` plus an ignore value
(255 by default), as in Cityscapes ``*_labelTrainIds.png`` and detectron2's
ADE20K ``annotations_detectron2``. Each class present becomes one stuff segment
with id ``class + 1``; ignored pixels are void (0) in ``id_map``.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from ecom2f.data import fileio
from ecom2f.data.base import DEFAULT_MAX_BAD_FRACTION, SegmentationDataset
from ecom2f.data.image_io import decode_image, decode_label_png, transpose_id_map
from ecom2f.data.metadata import Category, DatasetMetadata
from ecom2f.data.problems import DataProblemError, Problem, ProblemKind
from ecom2f.data.sample import build_sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def _categories(classes: Sequence[str] | int) -> list[Category]:
    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    if not names:
        raise ValueError("classes is empty: give the class names (or their number) of the label maps")
    return [Category(id=i, name=str(n), isthing=False) for i, n in enumerate(names)]


class SemanticDataset(SegmentationDataset):
    def __init__(
        self,
        image_root: str,
        label_root: str,
        classes: Sequence[str] | int,
        ignore_value: int = 255,
        image_suffix: str = "",
        label_suffix: str = ".png",
        strict: bool = True,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        transform: Callable[[dict], dict] | None = None,
        name: str | None = None,
        check_only: bool = False,
    ):
        """Pairs ``<stem><image_suffix>.<ext>`` in image_root with ``<stem><label_suffix>`` in label_root."""
        categories = _categories(classes)
        if 0 <= ignore_value < len(categories):
            raise ValueError(
                f"ignore_value={ignore_value} is also a class index (0..{len(categories) - 1}): pick a value outside"
            )
        metadata = DatasetMetadata(name or os.path.basename(str(image_root).rstrip("/")), categories, ignore_value)
        super().__init__(metadata, strict, max_bad_fraction, transform, check_only)
        self.image_root, self.label_root, self.ignore_value = str(image_root), str(label_root), ignore_value
        image_files = sorted(f for f in fileio.list_files(self.image_root) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not image_files:
            raise DataProblemError(
                Problem(ProblemKind.MISSING_IMAGE, self.image_root, f"no image ({', '.join(IMAGE_EXTENSIONS)}) found")
            )
        labels = fileio.list_files(self.label_root)
        records, problems_per_record = [], []
        for image_file in image_files:
            stem = os.path.splitext(image_file)[0]
            if image_suffix and stem.endswith(image_suffix):
                stem = stem[: -len(image_suffix)]
            label_file = stem + label_suffix
            problems = []
            if label_file not in labels:
                problems.append(
                    Problem(ProblemKind.MISSING_ANNOTATION_FILE, image_file, f"label {label_file} not in {self.label_root}")
                )
            records.append({"image_id": stem, "file_name": image_file, "label_file": label_file})
            problems_per_record.append(problems)
        self._set_records(records, problems_per_record)

    def _load_record(self, record: dict, problems: list[Problem]) -> dict:
        file = record["file_name"]
        try:
            decoded = decode_image(fileio.read_bytes(fileio.join(self.image_root, file)), file)
            labels = decode_label_png(
                fileio.read_bytes(fileio.join(self.label_root, record["label_file"])), record["label_file"]
            )
        except FileNotFoundError as error:
            raise DataProblemError(Problem(ProblemKind.MISSING_IMAGE, file, f"{error.filename} disappeared")) from error
        problems.extend(decoded.problems)
        if labels.shape == decoded.stored_size:
            labels = transpose_id_map(labels, decoded.transpose)
        elif labels.shape != decoded.rgb.shape[:2]:
            raise DataProblemError(
                Problem(
                    ProblemKind.SIZE_MISMATCH,
                    record["label_file"],
                    f"label is {labels.shape[1]}x{labels.shape[0]} (WxH) but image {file} is "
                    f"{decoded.rgb.shape[1]}x{decoded.rgb.shape[0]}",
                )
            )
        num_classes = self.metadata.num_classes
        values = np.unique(labels)
        bad = [int(v) for v in values if v != self.ignore_value and not 0 <= v < num_classes]
        if bad:
            raise DataProblemError(
                Problem(
                    ProblemKind.LABEL_OUT_OF_RANGE,
                    record["label_file"],
                    f"label values {bad[:10]} are outside 0..{num_classes - 1} and not the ignore value "
                    f"{self.ignore_value} (map raw ids to train ids first)",
                )
            )
        present = [int(v) for v in values if v != self.ignore_value]
        if not present:
            problems.append(Problem(ProblemKind.EMPTY_IMAGE, record["label_file"], "every pixel is ignored"))
        id_map = np.where(labels == self.ignore_value, 0, labels + 1)
        segments = [
            {"id": c + 1, "category_id": c, "iscrowd": 0, "area": int((labels == c).sum())} for c in present
        ]
        sample = build_sample(decoded.rgb, id_map, segments, self.metadata, record["image_id"], file)
        sample["present_classes"] = present
        return sample
