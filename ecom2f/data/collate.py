"""Batching samples of different sizes: pad to the largest, rounded up to 32."""

from __future__ import annotations

import math

import torch

from ecom2f.data.sample import training_targets

SIZE_DIVISIBILITY = 32  # the coarsest backbone stride Mask2Former uses
_META_KEYS = ("image_id", "file_name", "orig_size", "image_size", "segments_info", "id_map", "difficulty")


def collate_samples(
    samples: list[dict],
    size_divisibility: int = SIZE_DIVISIBILITY,
    pad_value: int = 0,
    with_id_maps: bool = True,
) -> dict:
    """Stack samples into a padded batch.

    Returns:
        images: uint8 ``[B, 3, H, W]``, H and W the largest in the batch rounded up to
            ``size_divisibility`` (padding at the bottom and right with ``pad_value``)
        padding_mask: bool ``[B, H, W]``, True on padding
        image_sizes: int64 ``[B, 2]`` (h, w) of each image before padding
        targets: per image {"labels": ``[K]``, "masks": bool ``[K, H, W]``} without
            crowd segments (see ``training_targets``), padded like the images
        meta: per image the fields evaluation needs (image_id, orig_size, id_map, ...);
            ``with_id_maps=False`` leaves out the id maps, which training does not
            need (an LSJ id map is 8 MB to ship from each DataLoader worker)
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility={size_divisibility} must be >= 1")
    sizes = [tuple(s["image"].shape[-2:]) for s in samples]
    height = math.ceil(max(h for h, _ in sizes) / size_divisibility) * size_divisibility
    width = math.ceil(max(w for _, w in sizes) / size_divisibility) * size_divisibility
    batch = len(samples)
    images = torch.full((batch, 3, height, width), pad_value, dtype=samples[0]["image"].dtype)
    padding_mask = torch.ones((batch, height, width), dtype=torch.bool)
    targets = []
    for i, (sample, (h, w)) in enumerate(zip(samples, sizes)):
        images[i, :, :h, :w] = sample["image"]
        padding_mask[i, :h, :w] = False
        target = training_targets(sample)
        masks = torch.zeros((len(target["labels"]), height, width), dtype=torch.bool)
        if target["masks"].shape[-2:] == (h, w):
            masks[:, :h, :w] = target["masks"]
        else:  # test-time samples keep their masks at the original size
            masks = target["masks"]
        targets.append({"labels": target["labels"], "masks": masks})
    return {
        "images": images,
        "padding_mask": padding_mask,
        "image_sizes": torch.tensor(sizes, dtype=torch.int64),
        "targets": targets,
        "meta": [{k: s[k] for k in _META_KEYS if k in s and (with_id_maps or k != "id_map")} for s in samples],
    }
