"""Multi-scale deformable self-attention module (Deformable DETR's MSDeformAttn) on ``ecom2f.ops``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ecom2f.ops import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Each query samples ``points`` locations per head and level around its reference point.

    Parameter names and layouts are Deformable DETR's (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``), so Mask2Former weights load as is.

    Under ``torch.autocast``, ``value_proj`` / ``output_proj`` follow autocast (the value
    reaches the op in the autocast dtype) while the offsets, attention weights, softmax
    and sampling locations are computed in float32 (fp32 master weights assumed).
    """

    def __init__(self, d_model: int = 256, levels: int = 3, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} must be divisible by heads {heads}")
        self.d_model, self.levels, self.heads, self.points = d_model, levels, heads, points
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start as a ring of directions, growing with the point index (Deformable DETR).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        for i in range(self.points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            query: ``[N, Q, C]`` (tokens plus positional encoding).
            reference_points: ``[N, Q, L, 2]`` (x, y) in ``[0, 1]``.
            value_input: ``[N, S, C]`` the tokens attended to.
            spatial_shapes: ``[L, 2]`` int64 (h, w) per level.
            level_start_index: ``[L]`` int64. Neither is validated here (the caller
                checks them; see ``ms_deform_attn``'s ``check_layout``).
        Returns:
            ``[N, Q, C]``.
        """
        n, q, _ = query.shape
        s = value_input.shape[1]
        value = self.value_proj(value_input).view(n, s, self.heads, self.d_model // self.heads)
        device_type = query.device.type
        autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
        # float64 is exempt, as autocast itself leaves float64 alone.
        if autocast and value.dtype != torch.float64:
            # The sampling geometry stays fp32 under autocast: bf16 offsets or locations
            # would quantise to 2^-8 of the map (0.3-0.6 px on a 128-167-wide level).
            with torch.autocast(device_type, enabled=False):
                locations, weights = self._sampling(query.float(), reference_points.float(), spatial_shapes)
        else:
            locations, weights = self._sampling(query, reference_points, spatial_shapes)
        # The encoder builds spatial_shapes / level_start_index from host integers and
        # checks them once per forward; re-reading them here would sync with the device.
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, check_layout=False)
        return self.output_proj(out)

    def _sampling(
        self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations ``[N, Q, H, L, P, 2]`` and softmaxed attention weights ``[N, Q, H, L, P]``."""
        n, q, _ = query.shape
        offsets = self.sampling_offsets(query).view(n, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, q, self.heads, self.levels * self.points)
        weights = F.softmax(weights, -1).view(n, q, self.heads, self.levels, self.points)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return locations, weights
