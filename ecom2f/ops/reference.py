"""Multi-scale deformable attention in plain PyTorch (``F.grid_sample``).

This is the fallback when the compiled extension is missing and the sibling of the
test oracle. It follows Deformable-DETR's conventions exactly: bilinear sampling,
zeros outside the map, ``align_corners=False`` (pixel = x * w - 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    check_layout: bool = True,
) -> torch.Tensor:
    """Multi-scale deformable attention with ``grid_sample``.

    Args:
        value: ``[N, S, H, D]`` tokens of all levels, level after level, row-major.
        spatial_shapes: ``[L, 2]`` int64 ``(h, w)`` of each level.
        level_start_index: ``[L]`` int64 first token of each level (unused: the
            levels are split by ``spatial_shapes``; kept for the common signature).
        sampling_locations: ``[N, Q, H, L, P, 2]`` ``(x, y)`` normalised to [0, 1].
        attention_weights: ``[N, Q, H, L, P]``.
        check_layout: unused (this function always reads ``spatial_shapes`` to split
            the levels); kept so it can stand in for ``ms_deform_attn``.

    Mixed precision (fp16/bf16 value, fp32 locations and weights) computes in fp32:
    grid_sample needs one dtype, and rounding the locations would move the samples.

    Returns:
        ``[N, Q, H * D]`` in the dtype of ``value``.
    """
    del level_start_index, check_layout
    out_dtype = value.dtype
    compute_dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    value = value.to(compute_dtype)
    attention_weights = attention_weights.to(compute_dtype)
    n, _, heads, head_dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_per_level = value.split(sizes, dim=1)
    grids = 2 * sampling_locations.to(compute_dtype) - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        # [N, h*w, H, D] -> [N*H, D, h, w]
        v = value_per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, head_dim, int(h), int(w))
        # [N, Q, H, P, 2] -> [N*H, Q, P, 2]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # [N*H, D, Q, P]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N, Q, H, L, P] -> [N*H, 1, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, q, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [N*H, D, Q]
    return out.view(n, heads * head_dim, q).transpose(1, 2).contiguous().to(out_dtype)
