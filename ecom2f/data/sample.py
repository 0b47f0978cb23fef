"""The one sample format every dataset yields, and the training targets made from it.

A sample is a dict:

- ``image``: uint8 ``[3, H, W]`` (RGB)
- ``masks``: bool ``[K, H, W]``, one per segment (crowd segments included)
- ``labels``: int64 ``[K]`` contiguous class ids; ``is_thing``, ``iscrowd``: bool ``[K]``
- ``segment_ids``: int64 ``[K]``, the segments' ids in ``id_map``
- ``id_map``: int64 ``[H, W]``, segment id per pixel, 0 = void (PQ needs it)
- ``segments_info``: list of dicts with the *dataset* ``category_id``, ``id``, ``iscrowd``
- ``image_id`` (COCO: the int id; semantic: the file stem), ``file_name``,
  ``orig_size`` ``(H, W)`` of the upright image before any transform
- optional: ``difficulty`` (synthetic data)
"""

from __future__ import annotations

import numpy as np
import torch

from ecom2f.data.metadata import DatasetMetadata


def build_sample(
    rgb: np.ndarray,
    id_map: np.ndarray,
    segments_info: list[dict],
    metadata: DatasetMetadata,
    image_id,
    file_name: str,
    masks: np.ndarray | None = None,
) -> dict:
    """Assemble a sample from an RGB array ``[H, W, 3]`` and a segment-id map ``[H, W]``.

    ``segments_info`` must already be validated (known categories, unique ids).
    ``masks`` (bool ``[K, H, W]``) is given only where segments may overlap (COCO
    instances); otherwise the masks are read off ``id_map``.
    """
    to_contiguous = metadata.dataset_id_to_contiguous
    id_tensor = torch.from_numpy(np.ascontiguousarray(id_map, dtype=np.int64))
    segment_ids = torch.tensor([int(s["id"]) for s in segments_info], dtype=torch.int64)
    if masks is not None:
        masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))
    elif len(segments_info):
        masks = id_tensor[None] == segment_ids[:, None, None]
    else:
        masks = torch.zeros((0, *id_tensor.shape), dtype=torch.bool)
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
        "masks": masks,
        "labels": torch.tensor([to_contiguous[int(s["category_id"])] for s in segments_info], dtype=torch.int64),
        "is_thing": torch.tensor(
            [metadata.categories[to_contiguous[int(s["category_id"])]].isthing for s in segments_info],
            dtype=torch.bool,
        ),
        "iscrowd": torch.tensor([bool(s.get("iscrowd", 0)) for s in segments_info], dtype=torch.bool),
        "segment_ids": segment_ids,
        "id_map": id_tensor,
        "segments_info": [dict(s) for s in segments_info],
        "image_id": image_id,
        "file_name": file_name,
        "orig_size": (int(rgb.shape[0]), int(rgb.shape[1])),
    }
    return sample


def training_targets(sample: dict) -> dict:
    """Labels ``[K']`` and masks ``[K', H, W]`` Mask2Former trains on.

    As in Mask2Former's panoptic dataset mapper, crowd segments are dropped and void
    pixels belong to no mask (so no query is asked to predict them); segments left
    empty by a crop are dropped too, so every target mask has at least one pixel.
    """
    keep = ~sample["iscrowd"]
    if sample["masks"].numel():
        keep &= sample["masks"].flatten(1).any(dim=1)
    return {"labels": sample["labels"][keep], "masks": sample["masks"][keep]}


def semantic_label_map(sample: dict, ignore_label: int = 255) -> np.ndarray:
    """``[H, W]`` int64 contiguous class per pixel of ``id_map`` (original size); void and crowd
    pixels are ``ignore_label``, as detectron2's semantic ground truth of a panoptic dataset."""
    id_map = sample["id_map"].numpy()
    semantic = np.full(id_map.shape, ignore_label, dtype=np.int64)
    for segment_id, label, crowd in zip(sample["segment_ids"].tolist(), sample["labels"].tolist(),
                                        sample["iscrowd"].tolist()):
        if not crowd:
            semantic[id_map == segment_id] = label
    return semantic
