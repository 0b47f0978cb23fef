"""An independent float64 oracle for multi-scale deformable attention.

Written without grid_sample: every sampling point gathers its four corners explicitly
and mixes them with bilinear weights. Gradients come from autograd through this
formula, so they are exact (away from the measure-zero pixel boundaries).
"""

from __future__ import annotations

import torch


def ms_deform_attn_oracle(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Same contract as ``ecom2f.ops.ms_deform_attn``; computes in float64.

    value ``[N, S, H, D]``; sampling_locations ``[N, Q, H, L, P, 2]``;
    attention_weights ``[N, Q, H, L, P]`` -> ``[N, Q, H * D]`` (float64).
    """
    value = value.double()
    sampling_locations = sampling_locations.double()
    attention_weights = attention_weights.double()
    n, _, heads, head_dim = value.shape
    q = sampling_locations.shape[1]
    out = value.new_zeros(n, q, heads, head_dim)
    batch_index = torch.arange(n).view(n, 1, 1, 1)
    head_index = torch.arange(heads).view(1, 1, heads, 1)
    for level, ((h, w), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        # pixel coordinates, align_corners=False
        x = sampling_locations[:, :, :, level, :, 0] * w - 0.5  # [N, Q, H, P]
        y = sampling_locations[:, :, :, level, :, 1] * h - 0.5
        x0 = torch.floor(x.detach())
        y0 = torch.floor(y.detach())
        fx = x - x0
        fy = y - y0
        for dy, dx, weight in (
            (0, 0, (1 - fy) * (1 - fx)),
            (0, 1, (1 - fy) * fx),
            (1, 0, fy * (1 - fx)),
            (1, 1, fy * fx),
        ):
            cx = (x0 + dx).long()
            cy = (y0 + dy).long()
            inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            token = start + cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)  # [N, Q, H, P]
            gathered = value[batch_index, token, head_index]  # [N, Q, H, P, D]
            coeff = torch.where(inside, weight, torch.zeros_like(weight)) * attention_weights[:, :, :, level]
            out = out + (coeff.unsqueeze(-1) * gathered).sum(3)
    return out.reshape(n, q, heads * head_dim)
