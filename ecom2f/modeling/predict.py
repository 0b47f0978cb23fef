"""From uint8 images to Mask2Former's per-image results, at any encoder depth.

Two ways to run a list of images:

- :func:`predict`: one batch padded to its largest image, as Mask2Former batches (an image's
  results then depend slightly on the other images' sizes: padding is not masked); images of
  several depths share the batch, each encoder layer running the rows still active.
- :func:`predict_grouped`: images grouped by padded size (each pads exactly as it would alone),
  the trunk and gate once per size group, then one sub-batch per chosen depth whose encoder runs
  that depth for every row (no per-layer gather). Results equal :func:`predict` on each image
  alone, to float rounding: convolution and matrix kernels pick their blocking by batch size, so
  sums are ordered differently (not bit-identical; the depths chosen are the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from ecom2f.modeling.postprocessing import (
    instance_inference,
    panoptic_inference,
    resize_masks_to_input,
    semantic_inference,
)
from ecom2f.modeling.preprocessing import normalize_and_pad

__all__ = ["PHASES", "TASKS", "predict", "predict_grouped"]

TASKS = ("semantic", "panoptic", "instance")
# The phases whose time predict_grouped attributes to each image (with a clock).
PHASES = ("trunk", "encoder", "decoder", "post")
_THRESHOLDS = ("object_mask_threshold", "overlap_threshold", "detections_per_image", "panoptic_on")


def _settings(model, tasks, overrides):
    """(test settings with the overrides, the tasks to run), both checked."""
    unknown = set(overrides) - set(_THRESHOLDS)
    if unknown:
        raise TypeError(f"unknown predict options {sorted(unknown)}; allowed: {list(_THRESHOLDS)}")
    test = model.config.test.model_copy(update=overrides)
    if tasks is None:
        tasks = [name for name, on in zip(TASKS, (test.semantic_on, test.panoptic_on, test.instance_on)) if on]
    bad = [task for task in tasks if task not in TASKS]
    if bad:
        raise ValueError(f"unknown tasks {bad}; choose from {TASKS}")
    return test, list(tasks)


def _image_list(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return [images] if images.dim() == 3 else list(images)
    return list(images)


def postprocess_image(model, test, tasks, mask_cls, mask_pred, padded, size, out_size) -> dict:
    """One image's Mask2Former results from its logits ``mask_cls [Q, K+1]`` and mask logits
    ``mask_pred [Q, H/4, W/4]`` (fp32): ``sem_seg``, ``panoptic_seg``, ``instances`` as requested."""
    cfg = model.config
    masks = resize_masks_to_input(mask_pred, padded, size, tuple(out_size))
    result = {}
    if "semantic" in tasks:
        result["sem_seg"] = semantic_inference(mask_cls, masks)
    if "panoptic" in tasks:
        result["panoptic_seg"] = panoptic_inference(
            mask_cls, masks, cfg.thing_ids, test.object_mask_threshold, test.overlap_threshold
        )
    if "instance" in tasks:
        result["instances"] = instance_inference(
            mask_cls, masks, cfg.thing_ids, test.detections_per_image, things_only=test.panoptic_on
        )
    return result


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
    test, tasks = _settings(model, tasks, overrides)
    images = _image_list(images)
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
        result = {"depth": int(raw["depths"][index])}
        result.update(postprocess_image(model, test, tasks, raw["pred_logits"][index], raw["pred_masks"][index],
                                        padded, size, out_size))
        results.append(result)
    return results


def size_groups(sizes: Sequence[tuple[int, int]], divisibility: int) -> dict[tuple[int, int], list[int]]:
    """Image positions by padded size (``(h, w)`` rounded up to ``divisibility``), in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    step = max(1, divisibility)
    for index, (h, w) in enumerate(sizes):
        key = (-(-int(h) // step) * step, -(-int(w) // step) * step)
        groups.setdefault(key, []).append(index)
    return groups


def _group_depth(depth, rows: list[int]):
    """The depth spec of the images ``rows`` (a per-image list or tensor is sliced)."""
    if isinstance(depth, torch.Tensor) and depth.dim() > 0:
        return depth.reshape(-1)[rows]
    if isinstance(depth, Sequence) and not isinstance(depth, str):
        return [depth[i] for i in rows]
    return depth


@torch.no_grad()
def predict_grouped(model, images, depth="gate", tasks: Sequence[str] | None = None, output_sizes=None, *,
                    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                    clock: Callable[[], float] | None = None, **overrides) -> list[dict]:
    """:func:`predict`'s results for each image as if it ran alone, with batches that cost what
    their depths cost (see the module docstring).

    Args:
        model, images, depth, tasks, output_sizes, overrides: as :func:`predict` (default depth: the gate).
        autocast: a factory of the context the network runs under (e.g. bf16 autocast); logits
            and masks are cast to fp32 before the post-processing.
        clock: a time source read between phases (one that waits for the device, on a GPU); with
            it each result has ``seconds`` and ``phases`` ({trunk, encoder, decoder, post}: the
            time of each phase of its group divided among the group's images).
    Returns:
        per image (input order) the keys of :func:`predict`, plus ``seconds``/``phases`` with a clock.
    """
    test, tasks = _settings(model, tasks, overrides)
    images = [image.to(model.device) for image in _image_list(images)]
    if not images:
        return []
    cfg = model.config
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    output_sizes = list(output_sizes) if output_sizes is not None else sizes
    amp = autocast or contextlib.nullcontext
    timer = _PhaseTimer(clock)
    results: list[dict | None] = [None] * len(images)
    was_training = model.training
    model.eval()
    try:
        for rows in size_groups(sizes, cfg.size_divisibility).values():
            timer.start()
            pixels, group_sizes = normalize_and_pad([images[i] for i in rows], cfg.pixel_mean, cfg.pixel_std,
                                                    cfg.size_divisibility)
            with amp():
                trunk = model.forward_trunk(pixels, group_sizes)
            depths = model.resolve_depths(_group_depth(depth, rows), len(rows), trunk.gate_logits)
            timer.lap("trunk", rows)
            for chosen in sorted(set(depths)):
                members = [j for j, d in enumerate(depths) if d == chosen]
                with amp():
                    tokens = model.forward_depth(trunk, chosen, members)
                timer.lap("encoder", [rows[j] for j in members])
                with amp():
                    out = model.forward_head(trunk, tokens, members)
                logits, masks = out["pred_logits"].float(), out["pred_masks"].float()
                timer.lap("decoder", [rows[j] for j in members])
                for position, j in enumerate(members):
                    i = rows[j]
                    results[i] = {"depth": chosen, **postprocess_image(
                        model, test, tasks, logits[position], masks[position], tuple(pixels.shape[-2:]), sizes[i],
                        output_sizes[i])}
                timer.lap("post", [rows[j] for j in members])
    finally:
        model.train(was_training)
    return timer.attach(results)


class _PhaseTimer:
    """Each phase's time divided among the images it ran for; does nothing without a clock."""

    def __init__(self, clock: Callable[[], float] | None) -> None:
        self.clock = clock
        self.phases: dict[int, dict[str, float]] = {}
        self.last = 0.0

    def start(self) -> None:
        if self.clock is not None:
            self.last = self.clock()

    def lap(self, phase: str, images: list[int]) -> None:
        if self.clock is None:
            return
        now = self.clock()
        share = (now - self.last) / len(images)
        for i in images:
            per_image = self.phases.setdefault(i, dict.fromkeys(PHASES, 0.0))
            per_image[phase] += share
        self.last = now

    def attach(self, results: list[dict]) -> list[dict]:
        if self.clock is not None:
            for i, result in enumerate(results):
                result["phases"] = self.phases[i]
                result["seconds"] = sum(self.phases[i].values())
        return results
