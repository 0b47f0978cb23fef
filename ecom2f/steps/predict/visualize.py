"""Overlays for ``ecom2f predict --vis``: the image with its segments in colour, each labelled with
its class (and score, for instances), and a header with the depth the gate chose and the image's
GFLOPs, in the manner of detectron2's Visualizer. Masks are blended with torchvision's
``draw_segmentation_masks``; text is drawn with PIL's default font."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_segmentation_masks

__all__ = ["overlay_jpeg", "segment_colour"]

ALPHA = 0.5
MIN_SCORE = 0.5  # instances drawn when only the instance task ran
FONT_SIZE = (10, 28)  # pixels, growing with the image: about 1/50 of its longer side


def segment_colour(index: int) -> tuple[int, int, int]:
    """A distinct, bright colour per segment (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def overlay_jpeg(rgb: np.ndarray, result: dict, categories: list[dict], layers: int, quality: int = 90) -> bytes:
    """JPEG bytes of ``rgb`` (uint8 ``[H, W, 3]``) with :func:`ecom2f.steps.predict.formats.compact`'s
    ``result``: panoptic segments when present, else instances scoring >= 0.5, else the semantic map.
    ``layers``: the encoder's depth (for ``depth k/layers``)."""
    masks, labels = _segments(result, categories)
    image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)  # a copy: torch needs it writable
    if len(masks):
        colours = [segment_colour(i) for i in range(len(masks))]
        image = draw_segmentation_masks(image, torch.from_numpy(masks), alpha=ALPHA, colors=colours)
    canvas = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=min(max(FONT_SIZE[0], max(canvas.size) // 50), FONT_SIZE[1]))
    for mask, label in zip(masks, labels):
        _label(draw, font, mask, label)
    budget = f" | budget {result['budget']}" if result.get("budget") else ""
    header = f"depth {result['depth']}/{layers} | {result['total_gflops']:.1f} GFLOPs{budget}"
    _text_box(draw, font, (2, 2), header)
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _segments(result: dict, categories: list[dict]) -> tuple[np.ndarray, list[str]]:
    """(bool masks ``[M, H, W]``, their labels) of what the overlay shows."""
    height, width = result["size"]
    if "ids" in result:
        ids = result["ids"]
        segments = [s for s in result["segments"] if (ids == s["id"]).any()]
        masks = np.stack([ids == s["id"] for s in segments]) if segments else np.zeros((0, height, width), bool)
        return masks, [categories[s["category_id"]]["name"] for s in segments]
    if "instances" in result:
        from pycocotools import mask as mask_utils

        found = result["instances"]
        keep = [i for i, score in enumerate(found["scores"]) if score >= MIN_SCORE]
        if not keep:
            return np.zeros((0, height, width), bool), []
        rles = [{"size": found["rle"][i]["size"], "counts": found["rle"][i]["counts"].encode("ascii")} for i in keep]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
        labels = [f"{categories[int(found['classes'][i])]['name']} {found['scores'][i]:.2f}" for i in keep]
        return masks, labels
    semantic = result["semantic"]
    classes = [int(c) for c in np.unique(semantic)]
    return np.stack([semantic == c for c in classes]), [categories[c]["name"] for c in classes]


def _label(draw: ImageDraw.ImageDraw, font, mask: np.ndarray, text: str) -> None:
    """``text`` at the mask's pixel nearest to its centroid (a centroid may fall outside the mask)."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    _text_box(draw, font, (int(cols[nearest]), int(rows[nearest])), text)


def _text_box(draw: ImageDraw.ImageDraw, font, xy: tuple[int, int], text: str) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font)
