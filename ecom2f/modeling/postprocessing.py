"""Mask2Former's inference: resize masks back, then semantic, panoptic and instance results.

Every function works on one image; shapes: ``mask_cls [Q, K+1]`` logits, ``mask_pred
[Q, H, W]`` logits at the output size.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "InstanceResult",
    "resize_masks_to_input",
    "semantic_inference",
    "panoptic_inference",
    "instance_inference",
]


@dataclass
class InstanceResult:
    """``scores [M]``, ``classes [M]`` contiguous ids, ``masks [M, H, W]`` bool, and the source query ``[M]``."""

    scores: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor
    query_index: torch.Tensor


def resize_masks_to_input(
    pred_masks: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int], output_size: tuple[int, int]
) -> torch.Tensor:
    """``[Q, H/4, W/4]`` -> ``[Q, out_h, out_w]``: upsample to the padded input, crop the image, resize.

    The three steps of Mask2Former (bilinear, align_corners=False each time).
    """
    masks = F.interpolate(pred_masks[None], size=padded_size, mode="bilinear", align_corners=False)
    masks = masks[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """``[K, H, W]`` per-class scores: sum over queries of class probability x mask probability."""
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    thing_ids: Collection[int],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[torch.Tensor, list[dict]]:
    """``(ids [H, W] int32, segments_info)``; the classes in ``thing_ids`` are things
    (``ModelConfig.thing_ids``), the rest stuff.

    Each pixel goes to the kept query with the highest score x mask probability; a query
    keeps its segment only where its own mask is >= 0.5, and only if that region is at least
    ``overlap_threshold`` of its mask. Stuff segments of one class merge into one id.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    mask_prob = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_prob[keep]
    h, w = cur_masks.shape[-2:] if cur_masks.dim() == 3 else mask_pred.shape[-2:]
    panoptic = torch.zeros((h, w), dtype=torch.int32, device=mask_pred.device)
    segments: list[dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic, segments
    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    stuff_ids: dict[int, int] = {}
    thing_ids = frozenset(int(c) for c in thing_ids)
    current = 0
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k])
        is_thing = pred_class in thing_ids
        owned = cur_mask_ids == k
        mask_area = int(owned.sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        mask = owned & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not is_thing:
                if pred_class in stuff_ids:
                    panoptic[mask] = stuff_ids[pred_class]
                    continue
                stuff_ids[pred_class] = current + 1
            current += 1
            panoptic[mask] = current
            segments.append({"id": current, "isthing": bool(is_thing), "category_id": pred_class})
    return panoptic, segments


def instance_inference(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, thing_ids: Collection[int], top_k: int = 100,
    things_only: bool = True,
) -> InstanceResult:
    """Top ``top_k`` (query, class) pairs by class probability; with ``things_only`` (panoptic
    models), stuff classes are dropped after the top-k. Score = class probability x mean mask
    probability inside the binary mask (``logit > 0``)."""
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    top_k = min(top_k, scores.numel())
    top_scores, top_index = scores.flatten(0, 1).topk(top_k, sorted=False)
    top_labels = labels[top_index]
    query_index = torch.div(top_index, num_classes, rounding_mode="floor")
    masks = mask_pred[query_index]
    if things_only:
        keep = torch.isin(top_labels, torch.as_tensor(sorted(thing_ids), dtype=top_labels.dtype, device=top_labels.device))
        top_scores, top_labels, masks, query_index = top_scores[keep], top_labels[keep], masks[keep], query_index[keep]
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return InstanceResult(top_scores * mask_scores, top_labels, binary.bool(), query_index)
