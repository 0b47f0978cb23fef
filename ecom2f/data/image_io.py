"""Decoding images, panoptic PNGs and semantic label PNGs into numpy arrays.

Images always come out as RGB ``uint8 [H, W, 3]`` in display orientation: grayscale,
palette, RGBA, CMYK and 16-bit images are converted and the EXIF orientation is
applied; each conversion is reported as a (warning) :class:`Problem` so the checker
can list it. Segmentation PNGs are never converted by colour management: their
values are ids.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ecom2f.data.problems import DataProblemError, Problem, ProblemKind

# A truncated file must be an error, never silently completed with grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False

EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the PIL transpose that brings the stored pixels upright
# (the same table as PIL.ImageOps.exif_transpose).
_ORIENTATION_TO_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_GRAYSCALE_MODES = {"1", "L", "LA"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class DecodedImage:
    """An RGB image ready for use and what was done to get it."""

    rgb: np.ndarray  # uint8 [H, W, 3], display orientation
    stored_size: tuple[int, int]  # (H, W) of the pixels as stored, before EXIF
    transpose: Image.Transpose | None  # applied to the stored pixels (EXIF)
    problems: list[Problem]


def _open(data: bytes, file: str) -> Image.Image:
    if not data:
        raise DataProblemError(Problem(ProblemKind.UNREADABLE_IMAGE, file, "the file is empty (0 bytes)"))
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes now, so truncation is seen here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataProblemError(
            Problem(ProblemKind.UNREADABLE_IMAGE, file, f"cannot decode the image ({error})")
        ) from error
    return image


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """uint8 of a single-channel high-bit-depth image (PIL mode I, I;16*, F)."""
    if mode == "F":  # float images: [0, 1] or [0, 255]
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    # Integer modes hold 16-bit data (PIL opens 16-bit PNG/TIFF as I;16 or I): keep the
    # full range, 65535 -> 255, even when this image happens to be dark.
    return np.clip(np.round(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def decode_image(data: bytes, file: str) -> DecodedImage:
    """Decode image bytes to RGB uint8 [H, W, 3] in display orientation.

    Raises DataProblemError (UNREADABLE_IMAGE) for empty, truncated or non-image data.
    """
    image = _open(data, file)
    problems: list[Problem] = []
    stored_size = (image.height, image.width)
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        problems.append(Problem(ProblemKind.HIGH_BIT_DEPTH_IMAGE, file, f"mode {mode}: scaled to 8 bits"))
        gray = _to_uint8(np.asarray(image), mode)
        rgb_image = Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")
    elif mode in _GRAYSCALE_MODES:
        problems.append(Problem(ProblemKind.GRAYSCALE_IMAGE, file, f"mode {mode}: converted to RGB"))
        rgb_image = image.convert("L").convert("RGB")
    elif mode in {"RGBA", "RGBa", "PA"}:
        problems.append(Problem(ProblemKind.RGBA_IMAGE, file, f"mode {mode}: alpha dropped"))
        rgb_image = image.convert("RGB")
    elif mode == "CMYK":
        problems.append(Problem(ProblemKind.CMYK_IMAGE, file, "mode CMYK: converted to RGB"))
        rgb_image = image.convert("RGB")
    elif mode == "P":
        problems.append(Problem(ProblemKind.PALETTE_IMAGE, file, "palette image: converted to RGB"))
        rgb_image = image.convert("RGB")
    elif mode == "RGB":
        rgb_image = image
    else:
        problems.append(Problem(ProblemKind.PALETTE_IMAGE, file, f"mode {mode}: converted to RGB"))
        rgb_image = image.convert("RGB")

    transpose = None
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    if orientation in _ORIENTATION_TO_TRANSPOSE:
        transpose = _ORIENTATION_TO_TRANSPOSE[orientation]
        problems.append(
            Problem(ProblemKind.EXIF_ROTATION, file, f"EXIF orientation {orientation}: applied to image and mask")
        )
        rgb_image = rgb_image.transpose(transpose)
    return DecodedImage(np.asarray(rgb_image, dtype=np.uint8).copy(), stored_size, transpose, problems)


def transpose_id_map(id_map: np.ndarray, transpose: Image.Transpose | None) -> np.ndarray:
    """Apply an image's EXIF transpose to an integer map [H, W] (exact: PIL mode 'I')."""
    if transpose is None:
        return id_map
    moved = Image.fromarray(id_map.astype(np.int32), mode="I").transpose(transpose)
    return np.asarray(moved, dtype=np.int32).astype(np.int64)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic encoding: id = R + 256 G + 256^2 B; [H, W, 3] -> int64 [H, W]."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(id_map: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`; int [H, W] -> uint8 [H, W, 3]."""
    id_map = np.asarray(id_map, dtype=np.int64)
    return np.stack([id_map % 256, (id_map // 256) % 256, (id_map // 65536) % 256], axis=-1).astype(np.uint8)


def decode_panoptic_png(data: bytes, file: str) -> np.ndarray:
    """Segment-id map int64 [H, W] of a COCO panoptic PNG (0 = void)."""
    image = _open(data, file)
    if image.mode not in {"RGB", "RGBA"}:
        raise DataProblemError(
            Problem(ProblemKind.UNREADABLE_IMAGE, file, f"panoptic PNG has mode {image.mode}, expected RGB ids")
        )
    return rgb_to_id(np.asarray(image.convert("RGB")))


def decode_label_png(data: bytes, file: str) -> np.ndarray:
    """Semantic label map int64 [H, W] of a single-channel (or palette) PNG."""
    image = _open(data, file)
    if image.mode not in {"L", "P", "I", "I;16", "I;16B", "I;16L"}:
        raise DataProblemError(
            Problem(ProblemKind.UNREADABLE_IMAGE, file, f"label PNG has mode {image.mode}, expected one channel")
        )
    # For a palette PNG the stored indices are the labels (asarray keeps them).
    return np.asarray(image).astype(np.int64)
