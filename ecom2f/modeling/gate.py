"""The ECO-M2F gate: predicts each image's encoder depth from its coarsest encoder input.

Default (as ECO-M2F): mean of the res5-level tokens after the input projection, before any
encoder layer and without positional encoding -> ``Linear(C, len(exits))``; the chosen
depth is ``exits[argmax]``. Pooling and the MLP are configurable so step 3 can search them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecom2f.modeling.config import GateConfig

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

    def pool(self, coarsest: torch.Tensor) -> torch.Tensor:
        """``[N, C, h, w]`` -> ``[N, F]`` as configured."""
        return pool_gate_features(coarsest, self.config.pooling, self.config.grid_size)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.hidden(pooled)))

    def depths(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, E]`` logits -> ``[N]`` int64 depths (``exits[argmax]``)."""
        return self.exits[logits.argmax(-1)]
