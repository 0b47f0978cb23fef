"""Mask2Former's MSDeformAttnPixelDecoder, split so the encoder can exit early.

Flow: backbone features -> :meth:`project` (1x1 conv + GroupNorm per encoder level,
coarsest first) -> :meth:`encoder_inputs` (flatten, positions) -> the encoder (any depth)
-> :meth:`decode` (split tokens back into maps, FPN to the finest level, mask features).
Module names follow Mask2Former's so its checkpoints load by a prefix rename.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ecom2f.config.model import PixelDecoderConfig
from ecom2f.modeling.deformable_encoder import DeformableTransformerEncoderOnly, EncoderInputs
from ecom2f.modeling.position_encoding import PositionEmbeddingSine

__all__ = ["ConvNorm", "MSDeformAttnPixelDecoder"]


class ConvNorm(nn.Conv2d):
    """detectron2's ``Conv2d`` with a ``norm`` submodule and optional ReLU (keys ``weight``, ``norm.*``)."""

    def __init__(self, *args, norm: nn.Module | None = None, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's XavierFill, as detectron2 initialises these convs."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class MSDeformAttnPixelDecoder(nn.Module):
    """Args:
        config: the pixel decoder section.
        input_channels: backbone channels per feature name (``res2..res5``).
        input_strides: backbone stride per feature name.
    """

    def __init__(self, config: PixelDecoderConfig, input_channels: dict[str, int], input_strides: dict[str, int]):
        super().__init__()
        missing = [name for name in config.in_features if name not in input_channels]
        if missing:
            raise ValueError(f"pixel decoder in_features {missing} are not backbone outputs {sorted(input_channels)}")
        by_stride = sorted(input_channels, key=lambda name: input_strides[name])
        self.encoder_features = sorted(config.in_features, key=lambda name: input_strides[name])  # finest first
        self.levels = len(self.encoder_features)
        conv_dim = config.conv_dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(input_channels[name], conv_dim, 1), nn.GroupNorm(config.num_groups, conv_dim))
            for name in self.encoder_features[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = DeformableTransformerEncoderOnly(
            d_model=conv_dim,
            heads=config.heads,
            num_layers=config.encoder_layers,
            ffn_dim=config.ffn_dim,
            levels=self.levels,
            points=config.points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.mask_dim = config.mask_dim
        self.mask_features = nn.Conv2d(conv_dim, config.mask_dim, 1)
        c2_xavier_fill(self.mask_features)
        finest_stride = input_strides[self.encoder_features[0]]
        num_fpn = int(math.log2(finest_stride) - math.log2(config.common_stride))
        if num_fpn < 0 or 2**num_fpn * config.common_stride != finest_stride:
            raise ValueError(
                f"common_stride {config.common_stride} must be a power-of-two fraction of the finest encoder stride {finest_stride}"
            )
        # FPN levels, finest last, named adapter_{i}/layer_{i} with i counted from the finest.
        self.fpn_features = by_stride[:num_fpn][::-1]
        self.lateral_names, self.output_names = [], []
        for idx, name in enumerate(by_stride[:num_fpn]):
            lateral = ConvNorm(input_channels[name], conv_dim, 1, bias=False, norm=nn.GroupNorm(config.num_groups, conv_dim))
            output = ConvNorm(
                conv_dim, conv_dim, 3, padding=1, bias=False, norm=nn.GroupNorm(config.num_groups, conv_dim), relu=True
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            self.lateral_names.append(f"adapter_{idx + 1}")
            self.output_names.append(f"layer_{idx + 1}")
        self.lateral_names.reverse()
        self.output_names.reverse()
        self.num_output_levels = 3  # Mask2Former's maskformer_num_feature_levels

    @property
    def encoder(self):
        return self.transformer.encoder

    def project(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Encoder levels after the input projection, coarsest first: ``[N, conv_dim, h_l, w_l]``."""
        return [proj(features[name]) for proj, name in zip(self.input_proj, self.encoder_features[::-1])]

    def encoder_inputs(self, projected: list[torch.Tensor]) -> EncoderInputs:
        pos = [self.pe_layer(src) for src in projected]
        return self.transformer.flatten(projected, pos)

    def laterals(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The FPN's lateral 1x1 convs on the backbone maps, coarsest first. They do not depend on
        the encoder, so a pass over several exits computes them once."""
        return [getattr(self, name)(features[f]) for f, name in zip(self.fpn_features, self.lateral_names)]

    def decode(
        self,
        tokens: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
        features: dict[str, torch.Tensor] | None = None,
        laterals: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder output -> ``(mask_features [N, mask_dim, H/4, W/4], multi_scale_features)``.

        ``tokens``: ``[N, S, C]``; ``shapes``: the host ``(h, w)`` of each level, coarsest
        first (:attr:`EncoderInputs.shapes`); ``features``: the backbone outputs of the same
        images (or ``laterals`` from :meth:`laterals`). ``multi_scale_features``: the 3
        coarsest maps ``[N, C, h_l, w_l]``, coarsest first.
        """
        if isinstance(shapes, torch.Tensor):
            raise TypeError("decode takes the level shapes as host (h, w) integers (EncoderInputs.shapes), not a tensor")
        if laterals is None:
            if features is None:
                raise ValueError("decode needs the backbone features or their laterals")
            laterals = self.laterals(features)
        n = tokens.shape[0]
        sizes = [h * w for h, w in shapes]
        maps = [
            chunk.transpose(1, 2).reshape(n, -1, h, w)
            for chunk, (h, w) in zip(torch.split(tokens, sizes, dim=1), shapes)
        ]
        for lateral, output_name in zip(laterals, self.output_names):
            merged = lateral + F.interpolate(maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(getattr(self, output_name)(merged))
        return self.mask_features(maps[-1]), maps[: self.num_output_levels]
