"""The ECO-M2F gate: predicts each image's encoder depth from its coarsest encoder input.

Default (as ECO-M2F): mean of the res5-level tokens after the input projection, before any
encoder layer and without positional encoding -> ``Linear(C, len(exits))``; the chosen
depth is ``exits[argmax]``. Pooling and the MLP are configurable so step 3 can search them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ecom2f.config.model import GateConfig

__all__ = ["Gate", "gate_feature_dim", "pool_gate_features"]


def pool_gate_features(coarsest: torch.Tensor, pooling: str = "mean", grid_size: int = 2) -> torch.Tensor:
    """``[N, C, h, w]`` -> pooled features ``[N, F]``.

    ``mean``: F = C. ``mean_max``: mean then max, F = 2C. ``grid``: adaptive average pooling to
    ``grid_size x grid_size`` cells, F = C * grid_size**2, ordered cell by cell (row-major),
    the C channels of a cell together.
    """
    if pooling == "mean":
        return coarsest.flatten(2).mean(-1)
    if pooling == "mean_max":
        flat = coarsest.flatten(2)
        return torch.cat((flat.mean(-1), flat.amax(-1)), 1)
    if pooling == "grid":
        cells = F.adaptive_avg_pool2d(coarsest, grid_size)  # [N, C, g, g]
        return cells.permute(0, 2, 3, 1).flatten(1)
    raise ValueError(f"unknown gate pooling {pooling!r}; expected mean, mean_max or grid")


def valid_cells(image_sizes, padded_size: tuple[int, int], map_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells of an ``map_size`` feature map covering each image of a batch padded to ``padded_size``.

    ``image_sizes``: ``[(h_i, w_i)]`` in pixels before padding. A cell counts when any pixel
    of the image falls in it (ceil), as the backbone's strided convolutions see it.
    """
    stride_h = padded_size[0] / map_size[0]
    stride_w = padded_size[1] / map_size[1]
    return [(min(map_size[0], math.ceil(int(h) / stride_h)), min(map_size[1], math.ceil(int(w) / stride_w)))
            for h, w in image_sizes]


def gate_feature_dim(channels: int, config: GateConfig) -> int:
    return {"mean": channels, "mean_max": 2 * channels, "grid": channels * config.grid_size**2}[config.pooling]


class Gate(nn.Module):
    """``forward(pooled [N, F]) -> logits [N, len(exits)]``; :meth:`depths` maps logits to depths.

    The last layer is ``head`` (ECO-M2F's ``gt.head``); hidden layers, if any, are ``hidden.*``.
    """

    def __init__(self, channels: int, config: GateConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("exits", torch.tensor(config.exits, dtype=torch.long), persistent=False)
        layers: list[nn.Module] = []
        width = gate_feature_dim(channels, config)
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout)]
            width = config.hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout) if config.hidden_layers == 0 and config.dropout else nn.Identity()
        self.head = nn.Linear(width, len(config.exits))

    def pool(self, coarsest: torch.Tensor, valid_sizes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """``[N, C, h, w]`` -> ``[N, F]`` as configured.

        ``valid_sizes``: per image, the ``(h_i, w_i)`` cells of the map its own pixels cover
        (see :func:`valid_cells`); the cells padding the batch to its largest image are left
        out, so an image gets the same gate features in any batch as alone.
        """
        if valid_sizes is None:
            return pool_gate_features(coarsest, self.config.pooling, self.config.grid_size)
        return torch.cat([
            pool_gate_features(coarsest[i : i + 1, :, :h, :w], self.config.pooling, self.config.grid_size)
            for i, (h, w) in enumerate(valid_sizes)
        ])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.hidden(pooled)))

    def depths(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, E]`` logits -> ``[N]`` int64 depths (``exits[argmax]``)."""
        return self.exits[logits.argmax(-1)]
