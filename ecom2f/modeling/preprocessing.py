"""Mask2Former's input handling: normalise, pad bottom-right to a multiple of the divisibility.

Two entry points: :func:`normalize_and_pad` for a list of images of their own sizes (inference),
:func:`normalize_batch` for a batch the collate already padded (training, step 2's references).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalize_and_pad", "normalize_batch"]


def normalize_and_pad(
    images: list[torch.Tensor], pixel_mean, pixel_std, size_divisibility: int = 32
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """uint8 (or float 0..255) RGB ``[3, H_i, W_i]`` images -> ``([N, 3, H, W] float, [(H_i, W_i)])``.

    Padding value is 0 *after* normalisation (detectron2's ImageList), to the largest
    size in the batch rounded up to ``size_divisibility``.
    """
    if not images:
        raise ValueError("normalize_and_pad needs at least one image")
    for index, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image {index} has shape {tuple(image.shape)}; expected RGB [3, H, W]")
    device = images[0].device
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=device).view(3, 1, 1)
    sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    if size_divisibility > 1:
        height = (height + size_divisibility - 1) // size_divisibility * size_divisibility
        width = (width + size_divisibility - 1) // size_divisibility * size_divisibility
    batch = []
    for image, (h, w) in zip(images, sizes):
        normalized = (image.to(device=device, dtype=torch.float32) - mean) / std
        batch.append(F.pad(normalized, (0, width - w, 0, height - h), value=0.0))
    return torch.stack(batch), sizes


def normalize_batch(images: torch.Tensor, padding_mask: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` padded by the collate, ``padding_mask`` bool ``[N, H, W]`` (True on
    padding) -> float32 ``[N, 3, H, W]`` normalised pixels with zero padding, on ``model.device``.

    ``model``: an :class:`~ecom2f.modeling.EarlyExitMask2Former` (its ``device``, ``pixel_mean``
    and ``pixel_std`` ``[3, 1, 1]``). The uint8 batch crosses to the device first (4x fewer bytes
    than floats; asynchronous from pinned memory) and becomes float there. Mask2Former pads with
    0 after normalising (detectron2's ImageList); the collate pads the uint8 images, so the
    padding is reset here.
    """
    device = model.device
    pixels = images.to(device, non_blocking=True).float()
    pixels = (pixels - model.pixel_mean) / model.pixel_std
    return pixels.masked_fill(padding_mask.to(device, non_blocking=True)[:, None], 0.0)
