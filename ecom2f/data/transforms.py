"""Mask2Former's augmentation recipes with torchvision.transforms.v2.

A sample's image, segment masks, id map and boxes are wrapped as tv_tensors
(Image, Mask, Mask, BoundingBoxes) so every geometric transform moves them together
(masks and ids with nearest-neighbour interpolation, padding them as void). After a
training recipe, segments that the crop emptied are dropped, so no target mask is
empty. The test recipe resizes the image only: the ground truth stays at the
original size, where predictions are compared after :func:`restore_original_size`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

IMAGE_PAD_VALUE = 128  # detectron2's FixedSizeCrop pads images with grey
_FILL = {tv_tensors.Image: IMAGE_PAD_VALUE, tv_tensors.Mask: 0}  # masks: padding is void
_PER_SEGMENT = ("masks", "labels", "is_thing", "iscrowd", "segment_ids", "boxes")


class SampleTransform:
    """Applies a v2 pipeline to a sample dict, keeping every per-segment field in step."""

    def __init__(self, pipeline: Callable, geometric_targets: bool = True):
        self.pipeline = pipeline
        self.geometric_targets = geometric_targets

    def __call__(self, sample: dict) -> dict:
        sample = dict(sample)
        height, width = sample["image"].shape[-2:]
        if not self.geometric_targets:
            sample["image"] = self.pipeline(tv_tensors.Image(sample["image"])).as_subclass(torch.Tensor)
            sample["image_size"] = tuple(sample["image"].shape[-2:])
            return sample
        masks = sample["masks"]
        boxes = masks_to_boxes(masks) if len(masks) else torch.zeros((0, 4))
        inputs = {
            "image": tv_tensors.Image(sample["image"]),
            "id_map": tv_tensors.Mask(sample["id_map"][None]),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        }
        # Panoptic and semantic masks are a function of the id map: moving the one id
        # map and reading the masks off it is K times cheaper than moving K masks (at
        # 1024 px LSJ this is most of the cost). Overlapping instance masks move as masks.
        from_ids = torch.equal(masks, sample["id_map"][None] == sample["segment_ids"][:, None, None])
        if not from_ids:
            inputs["masks"] = tv_tensors.Mask(masks)
        moved = self.pipeline(inputs)
        sample["image"] = moved["image"].as_subclass(torch.Tensor)
        sample["id_map"] = moved["id_map"].as_subclass(torch.Tensor)[0]
        sample["boxes"] = moved["boxes"].as_subclass(torch.Tensor)
        if from_ids:
            sample["masks"] = sample["id_map"][None] == sample["segment_ids"][:, None, None]
        else:
            sample["masks"] = moved["masks"].as_subclass(torch.Tensor).bool()
        # amax is ~3x faster than any() over [K, H*W] bool here.
        keep = sample["masks"].flatten(1).amax(dim=1) if len(masks) else torch.zeros(0, dtype=torch.bool)
        for key in _PER_SEGMENT:
            sample[key] = sample[key][keep]
        sample["segments_info"] = [s for s, k in zip(sample["segments_info"], keep.tolist()) if k]
        sample["image_size"] = tuple(sample["image"].shape[-2:])
        return sample


class PadToAtLeast(T.Transform):
    """Pad at the bottom and right up to ``size`` (h, w), as detectron2's FixedSizeCrop.

    torchvision's ``RandomCrop(pad_if_needed=True)`` pads both sides by the full
    shortfall (a 100 px image becomes ~1950 px wide before a 1024 crop); padding only
    what is missing keeps LSJ's small scales cheap.
    """

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list) -> dict:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        height, width = image.shape[-2:]
        return {"padding": [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.BoundingBoxes)):
            return inpt
        if not any(params["padding"]):
            return inpt
        fill = _FILL.get(type(inpt), 0)
        return T.functional.pad(inpt, params["padding"], fill=fill)


def coco_lsj(image_size: int = 1024, scale_range: tuple[float, float] = (0.1, 2.0)) -> SampleTransform:
    """COCO large-scale jitter: resize to scale x image_size (kept aspect), crop/pad to square, flip."""
    return SampleTransform(
        T.Compose(
            [
                T.RandomHorizontalFlip(),
                T.ScaleJitter(target_size=(image_size, image_size), scale_range=scale_range),
                PadToAtLeast((image_size, image_size)),
                T.RandomCrop((image_size, image_size)),
            ]
        )
    )


def cityscapes_train(crop_size: tuple[int, int] = (512, 1024), base_short_side: int = 1024) -> SampleTransform:
    """Cityscapes: short side 0.5-2.0 x base, crop, photometric distortion, flip."""
    short_sides = [int(base_short_side * s / 10) for s in range(5, 21)]
    return SampleTransform(
        T.Compose(
            [
                T.RandomShortestSize(min_size=short_sides, max_size=4 * base_short_side),
                PadToAtLeast(crop_size),
                T.RandomCrop(crop_size),
                # The SSD photometric distortion Mask2Former uses, in torchvision terms.
                T.ColorJitter(brightness=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18 / 360),
                T.RandomHorizontalFlip(),
            ]
        )
    )


def inference_resize(short_side: int = 800, max_size: int = 1333) -> SampleTransform:
    """Test time: resize the image's short side (long side at most max_size); GT untouched.

    detectron2's ResizeShortestEdge. torchvision's Resize refuses ``max_size <= short_side``;
    there the long-side limit always binds, so the long side goes to ``max_size``.
    Padding to a multiple of 32 happens in the collate; ``image_size`` records the
    resized size so predictions can be cropped and scaled back.
    """
    if max_size > short_side:
        resize = T.Resize(short_side, max_size=max_size, antialias=True)
    else:
        resize = T.Resize(None, max_size=max_size, antialias=True)
    return SampleTransform(resize, geometric_targets=False)


RECIPES = {
    "coco_lsj": coco_lsj,
    "cityscapes": cityscapes_train,
    "coco_test": lambda: inference_resize(800, 1333),
    "cityscapes_test": lambda: inference_resize(1024, 2048),
}


def build_transform(recipe: str | None, **kwargs) -> SampleTransform | None:
    if recipe in (None, "none"):
        return None
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; choose one of {sorted(RECIPES)} or 'none'")
    return RECIPES[recipe](**kwargs)


def restore_original_size(prediction: torch.Tensor, image_size: tuple[int, int], orig_size: tuple[int, int],
                          mode: str = "bilinear") -> torch.Tensor:
    """Map a prediction ``[..., H_pad, W_pad]`` on the padded batch back to ``orig_size``.

    Crops the padding (keeps ``image_size``), then interpolates to the original size
    (``mode='nearest'`` for label maps).
    """
    height, width = image_size
    cropped = prediction[..., :height, :width]
    lead = cropped.shape[:-2]
    flat = cropped.reshape(-1, 1, height, width)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(flat.float(), size=tuple(orig_size), mode=mode, **kwargs).reshape(*lead, *orig_size)
    return resized.to(prediction.dtype) if mode == "nearest" else resized
