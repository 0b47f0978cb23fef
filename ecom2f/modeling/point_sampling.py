"""Point sampling of mask logits, as Mask2Former trains on points instead of full masks.

Coordinates are normalised to ``[0, 1]`` over the (padded) mask frame, ``(x, y)`` order,
so predictions at ``H/4`` and targets at full resolution are sampled at the same places.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "point_sample",
    "uncertainty_from_logits",
    "uncertain_point_coords_with_randomness",
]


def point_sample(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``input`` at normalised points.

    Args:
        input: ``[N, C, H, W]`` feature or mask map.
        coords: ``[N, P, 2]`` points, ``(x, y)`` in ``[0, 1]`` of the whole map
            (``align_corners=False``: 0 and 1 are the outer pixel edges).

    Returns:
        ``[N, C, P]`` sampled values (zero padding outside the map).
    """
    if input.dim() != 4:
        raise ValueError(f"point_sample expects input [N, C, H, W], got shape {tuple(input.shape)}")
    if coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != input.shape[0]:
        raise ValueError(
            f"point_sample expects coords [N, P, 2] with N={input.shape[0]}, got shape {tuple(coords.shape)}"
        )
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(input.dtype)  # [N, P, 1, 2] in grid_sample's [-1, 1]
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


def uncertainty_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's uncertainty: ``-|logit|``, highest where the mask is least decided.

    Args:
        logits: ``[N, 1, P]`` sampled mask logits.

    Returns:
        ``[N, 1, P]`` uncertainty scores.
    """
    if logits.dim() != 3 or logits.shape[1] != 1:
        raise ValueError(f"uncertainty_from_logits expects [N, 1, P] logits, got shape {tuple(logits.shape)}")
    return -logits.abs()


def uncertain_point_coords_with_randomness(
    mask_logits: torch.Tensor,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose training points: the most uncertain of an oversampled set, plus uniform ones.

    Draws ``int(num_points * oversample_ratio)`` uniform points per mask, keeps the
    ``int(importance_sample_ratio * num_points)`` with the highest ``-|logit|`` and fills
    the rest with fresh uniform points (Mask2Former / PointRend's training sampler).

    Args:
        mask_logits: ``[N, 1, H, W]`` predicted mask logits (no gradient is needed).
        num_points: points per mask returned.
        oversample_ratio: >= 1, size of the candidate set relative to ``num_points``.
        importance_sample_ratio: in ``[0, 1]``, share of points chosen by uncertainty.
        generator: optional RNG for reproducible draws.

    Returns:
        ``[N, num_points, 2]`` coordinates ``(x, y)`` in ``[0, 1]``.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"expected mask logits [N, 1, H, W], got shape {tuple(mask_logits.shape)}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = mask_logits.shape[0]
    device = mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(num_masks, num_candidates, 2, device=device, generator=generator)
    uncertainty = uncertainty_from_logits(point_sample(mask_logits, candidates))[:, 0, :]  # [N, num_candidates]
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # [N, num_uncertain]
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        fresh = torch.rand(num_masks, num_random, 2, device=device, generator=generator)
        chosen = torch.cat([chosen, fresh], dim=1)
    return chosen
