"""From uint8 images to Mask2Former's per-image results, at any encoder depth."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ecom2f.modeling.postprocessing import (
    instance_inference,
    panoptic_inference,
    resize_masks_to_input,
    semantic_inference,
)
from ecom2f.modeling.preprocessing import normalize_and_pad

__all__ = ["predict", "TASKS"]

TASKS = ("semantic", "panoptic", "instance")
_THRESHOLDS = ("object_mask_threshold", "overlap_threshold", "detections_per_image", "panoptic_on")


@torch.no_grad()
def predict(model, images, depth=None, tasks: Sequence[str] | None = None, output_sizes=None, **overrides) -> list[dict]:
    """Run ``model`` on images and post-process as Mask2Former.

    Args:
        model: an :class:`~ecom2f.modeling.early_exit_mask2former.EarlyExitMask2Former`.
        images: a list of uint8 RGB ``[3, H_i, W_i]`` tensors (or one such tensor, or ``[N, 3, H, W]``).
        depth: None (all layers), int, per-image list, or ``"gate"``.
        tasks: subset of ``("semantic", "panoptic", "instance")``; default: those on in ``config.test``.
        output_sizes: per image ``(h, w)`` to resize results to (default: the input size).
        overrides: ``object_mask_threshold``, ``overlap_threshold``, ``detections_per_image``,
            ``panoptic_on`` (instance results keep things only when True, as Mask2Former).
    Returns:
        per image ``{"depth": int, "sem_seg": [K, h, w], "panoptic_seg": (ids [h, w] int32,
        segments_info), "instances": InstanceResult}`` (only the requested tasks).
    """
    unknown = set(overrides) - set(_THRESHOLDS)
    if unknown:
        raise TypeError(f"unknown predict options {sorted(unknown)}; allowed: {list(_THRESHOLDS)}")
    test = model.config.test.model_copy(update=overrides)
    if tasks is None:
        tasks = [name for name, on in zip(TASKS, (test.semantic_on, test.panoptic_on, test.instance_on)) if on]
    bad = [task for task in tasks if task not in TASKS]
    if bad:
        raise ValueError(f"unknown tasks {bad}; choose from {TASKS}")
    if isinstance(images, torch.Tensor):
        images = [images] if images.dim() == 3 else list(images)
    cfg = model.config
    pixels, sizes = normalize_and_pad(
        [image.to(model.device) for image in images], cfg.pixel_mean, cfg.pixel_std, cfg.size_divisibility
    )
    if output_sizes is None:
        output_sizes = sizes
    was_training = model.training
    model.eval()
    try:
        raw = model.forward_raw(pixels, depth, image_sizes=sizes)
    finally:
        model.train(was_training)
    padded = tuple(pixels.shape[-2:])
    results = []
    for index, (size, out_size) in enumerate(zip(sizes, output_sizes)):
        mask_cls = raw["pred_logits"][index]
        mask_pred = resize_masks_to_input(raw["pred_masks"][index], padded, size, tuple(out_size))
        result = {"depth": int(raw["depths"][index])}
        if "semantic" in tasks:
            result["sem_seg"] = semantic_inference(mask_cls, mask_pred)
        if "panoptic" in tasks:
            result["panoptic_seg"] = panoptic_inference(
                mask_cls, mask_pred, cfg.num_things, test.object_mask_threshold, test.overlap_threshold
            )
        if "instance" in tasks:
            result["instances"] = instance_inference(
                mask_cls, mask_pred, cfg.num_things, test.detections_per_image, things_only=test.panoptic_on
            )
        results.append(result)
    return results
