"""What a gate reads: the cached pooled features of the depth table, and the standardisation
folded into the saved gate so that it reads the model's raw pooled features."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ecom2f.modeling.gate import Gate
from ecom2f.steps.gate.data import GateTable

__all__ = ["fold_standardisation", "gate_inputs"]


def gate_inputs(table: GateTable, pooling: str, grid_size: int) -> np.ndarray:
    """The cached features as the Gate's pooled input ``[N, F]`` for ``pooling``.

    ``mean`` and ``mean_max`` are the stored mean / concat(mean, max), exactly what
    :func:`~ecom2f.modeling.gate.pool_gate_features` computes. ``grid`` at the stored size G is
    the stored grid; at a smaller g dividing G, each g-cell is the average of its (G/g)^2
    stored cells, which equals pooling the map to g x g directly when the map's sides divide
    by G (otherwise adaptive pooling's uneven bins make it a close approximation).
    """
    if pooling == "mean":
        return table.mean
    if pooling == "mean_max":
        return np.concatenate((table.mean, table.max), axis=1)
    if pooling != "grid":
        raise ValueError(f"gate pooling {pooling!r}: expected mean, mean_max or grid")
    stored = table.grid_size
    if grid_size == stored:
        return table.grid
    if grid_size > stored or stored % grid_size:
        raise ValueError(
            f"gate grid size {grid_size} cannot be made from the stored {stored}x{stored} grid; use a divisor of "
            f"{stored} or rebuild step 2 with depth.gate_feature_grid a multiple of {grid_size}"
        )
    block = stored // grid_size
    cells = table.grid.reshape(len(table), grid_size, block, grid_size, block, table.channels)
    return cells.mean(axis=(2, 4), dtype=np.float32).reshape(len(table), -1)


def fold_standardisation(gate: Gate, mean: torch.Tensor, std: torch.Tensor) -> Gate:
    """A copy of ``gate`` whose first linear layer takes raw features: ``W x' + b`` with
    ``x' = (x - mean) / std`` becomes ``(W / std) x + (b - (W / std) mean)``; the same logits
    (up to rounding) in eval mode. ``mean``, ``std``: ``[F]``."""
    folded = copy.deepcopy(gate)
    first = folded.hidden[0] if len(folded.hidden) else folded.head
    with torch.no_grad():
        scaled = first.weight / std
        first.bias -= scaled @ mean
        first.weight.copy_(scaled)
    return folded
