"""A user's image bytes -> RGB uint8, or a reason to refuse it (the batch job skips and counts it;
the service answers 400 or 413).

Decoding is :func:`ecom2f.data.image_io.decode_image` (grayscale, palette, RGBA, CMYK and 16-bit
images converted, the EXIF orientation applied, truncated files refused). The pixel limit is
checked on the header, before any pixel is decoded, so a huge image costs no memory.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ecom2f.data.image_io import decode_image
from ecom2f.data.problems import DataProblemError

__all__ = ["DecodedUserImage", "ImageRejected", "decode_user_image"]

TOO_LARGE = "too_large"
UNREADABLE = "unreadable"


class ImageRejected(ValueError):
    """An image that cannot be segmented as given; ``kind`` is ``too_large`` or ``unreadable``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class DecodedUserImage:
    rgb: np.ndarray  # uint8 [H, W, 3], display orientation
    notes: list[str]  # conversions applied (e.g. "cmyk_image: converted to RGB")


def decode_user_image(data: bytes, name: str, max_pixels: int) -> DecodedUserImage:
    """RGB uint8 ``[H, W, 3]`` of the encoded image ``data`` (``name`` is for messages).

    Raises :class:`ImageRejected`: ``too_large`` when width x height exceeds ``max_pixels``
    (``serving.max_pixels``), ``unreadable`` for empty, truncated or non-image bytes.
    """
    with _pil_pixel_limit(None):
        width, height = _header_size(data, name)
    if width * height > max_pixels:
        raise ImageRejected(
            TOO_LARGE,
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(serving.max_pixels); resize the image or raise the limit",
        )
    with _pil_pixel_limit(max_pixels):
        try:
            decoded = decode_image(data, name)
        except DataProblemError as error:
            message = str(error.problem) if error.problem is not None else str(error)
            raise ImageRejected(UNREADABLE, message) from None
    if decoded.rgb.shape[0] == 0 or decoded.rgb.shape[1] == 0:
        raise ImageRejected(UNREADABLE, f"{name}: the image has no pixels ({decoded.rgb.shape})")
    return DecodedUserImage(decoded.rgb, [f"{p.kind.value}: {p.message}" for p in decoded.problems])


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int | None):
    """PIL's decompression-bomb guard off (None: reading a header allocates nothing) or at least at our
    limit (PIL warns above it and refuses at twice it): our header check is what refuses, with a
    message naming the setting."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max(int(max_pixels), previous or 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _header_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the header only."""
    if not data:
        raise ImageRejected(UNREADABLE, f"{name}: the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(UNREADABLE, f"{name}: cannot decode the image ({error})") from None
