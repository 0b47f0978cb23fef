"""The deformable transformer encoder of Mask2Former's pixel decoder, with early exits.

An image's *depth* is how many encoder layers it runs (0..num_layers). Images of one
batch may have different depths: layer ``l`` runs only on the images whose depth is
larger than ``l``, so each image gets exactly what it would get alone, and the compute
saved is real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ecom2f.modeling.deformable_attention import MSDeformAttn

__all__ = ["EncoderInputs", "DeformableEncoderLayer", "DeformableEncoder", "DeformableTransformerEncoderOnly"]


@dataclass
class EncoderInputs:
    """Everything the encoder layers need, in Mask2Former's token order (coarsest level first).

    tokens: ``[N, S, C]`` input-projected features, no positional encoding.
    pos: ``[N, S, C]`` sine encoding plus the level embedding.
    spatial_shapes: ``[L, 2]`` int64 (h, w), coarsest first.
    level_start_index: ``[L]`` int64.
    reference_points: ``[N, S, L, 2]`` (x, y) pixel centres normalised to ``[0, 1]``.
    """

    tokens: torch.Tensor
    pos: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    reference_points: torch.Tensor

    def select(self, index: torch.Tensor) -> EncoderInputs:
        """The same inputs for the images ``index`` only."""
        return EncoderInputs(
            self.tokens.index_select(0, index),
            self.pos.index_select(0, index),
            self.spatial_shapes,
            self.level_start_index,
            self.reference_points.index_select(0, index),
        )


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then a ReLU FFN; ``[N, S, C] -> [N, S, C]``."""

    def __init__(self, d_model: int = 256, ffn_dim: int = 1024, levels: int = 3, heads: int = 8, points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, levels, heads, points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points, spatial_shapes, level_start_index):
        attended = self.self_attn(x + pos, reference_points, x, spatial_shapes, level_start_index)
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` that can stop early, per image."""

    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self, inputs: EncoderInputs, depths: torch.Tensor, keep_layer_outputs: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run each image through its first ``depths[i]`` layers.

        Args:
            inputs: see :class:`EncoderInputs`; batch ``N``.
            depths: ``[N]`` int64 in ``0..num_layers``.
            keep_layer_outputs: also return the state after each executed layer.
        Returns:
            ``([N, S, C] final state of each image, [state after layer l for l < max depth])``.
            In a state after layer ``l``, images with depth ``<= l`` hold their final state.
        """
        check_depths(depths, inputs.tokens.shape[0], self.num_layers)
        x = inputs.tokens
        outputs = []
        max_depth = int(depths.max()) if depths.numel() else 0
        for index in range(max_depth):
            layer = self.layers[index]
            active = depths > index
            if bool(active.all()):
                x = layer(x, inputs.pos, inputs.reference_points, inputs.spatial_shapes, inputs.level_start_index)
            else:
                rows = active.nonzero().squeeze(1)
                part = inputs.select(rows)
                updated = layer(
                    x.index_select(0, rows), part.pos, part.reference_points, part.spatial_shapes, part.level_start_index
                )
                x = x.index_copy(0, rows, updated)
            if keep_layer_outputs:
                outputs.append(x)
        return x, outputs


def check_depths(depths: torch.Tensor, batch: int, num_layers: int) -> None:
    if depths.dtype != torch.int64 or depths.shape != (batch,):
        raise ValueError(f"depths must be an int64 tensor of shape [{batch}], got {depths.dtype} {tuple(depths.shape)}")
    if batch and (int(depths.min()) < 0 or int(depths.max()) > num_layers):
        raise ValueError(f"depths {depths.tolist()} must lie in 0..{num_layers} (the encoder has {num_layers} layers)")


class DeformableTransformerEncoderOnly(nn.Module):
    """Flattens the levels into tokens and owns the level embedding (Mask2Former's key layout)."""

    def __init__(self, d_model=256, heads=8, num_layers=6, ffn_dim=1024, levels=3, points=4) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(levels, d_model))
        self.encoder = DeformableEncoder(num_layers, d_model=d_model, ffn_dim=ffn_dim, levels=levels, heads=heads, points=points)
        nn.init.normal_(self.level_embed)
        for parameter in self.encoder.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()

    def flatten(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> EncoderInputs:
        """``srcs``/``pos_embeds``: per level ``[N, C, h, w]``, coarsest first."""
        tokens, pos, shapes = [], [], []
        for level, (src, pos_embed) in enumerate(zip(srcs, pos_embeds)):
            h, w = src.shape[-2:]
            shapes.append((h, w))
            tokens.append(src.flatten(2).transpose(1, 2))
            pos.append(pos_embed.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        device = srcs[0].device
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        reference = reference_points(shapes, srcs[0].shape[0], len(shapes), device, srcs[0].dtype)
        return EncoderInputs(torch.cat(tokens, 1), torch.cat(pos, 1), spatial_shapes, level_start_index, reference)


def reference_points(shapes, batch: int, levels: int, device, dtype) -> torch.Tensor:
    """``[N, S, L, 2]``: every token's pixel centre (x, y) in ``[0, 1]``, repeated per level.

    No padding is masked (Mask2Former's inference), so valid ratios are 1.
    """
    points = []
    for h, w in shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
    ref = torch.cat(points, 0).to(dtype)
    return ref[None, :, None, :].expand(batch, -1, levels, -1)
