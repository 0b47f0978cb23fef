"""Which encoder exit an iteration trains, and how much its loss weighs (step 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

AlphaKind = Literal["constant", "linear", "quadratic"]


def exit_loss_weight(exit_layers: int, kind: AlphaKind = "linear") -> float:
    """alpha_k: 1, k (ECO-M2F's choice: deeper exits weigh more) or k**2."""
    if exit_layers < 1:
        raise ValueError(f"exit_loss_weight: the exit must be at least 1 layer, got {exit_layers}")
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return float(exit_layers)
    if kind == "quadratic":
        return float(exit_layers**2)
    raise ValueError(f"exit_loss_weight: unknown kind {kind!r}; use 'constant', 'linear' or 'quadratic'")


class ExitSampler:
    """Draws the exit of each iteration from ``exits`` (uniform, or with ``probabilities``).

    The draw depends only on ``(seed, step)``, so every rank trains the same exit in an
    iteration (no rank waits on gradients another never computes) and a resumed run
    repeats the same sequence.
    """

    def __init__(self, exits: Sequence[int], probabilities: Sequence[float] | None = None, seed: int = 0):
        if not exits:
            raise ValueError("ExitSampler: exits must not be empty")
        if len(set(exits)) != len(exits) or min(exits) < 1:
            raise ValueError(f"ExitSampler: exits must be distinct layer counts >= 1, got {list(exits)}")
        if probabilities is None:
            probabilities = [1.0] * len(exits)
        if len(probabilities) != len(exits) or min(probabilities) < 0 or sum(probabilities) <= 0:
            raise ValueError(
                f"ExitSampler: probabilities {list(probabilities)} must be {len(exits)} non-negative numbers "
                f"with a positive sum, one per exit {list(exits)}"
            )
        self.exits = list(exits)
        total = float(sum(probabilities))
        self.probabilities = torch.tensor([p / total for p in probabilities], dtype=torch.float64)
        self.seed = seed

    def __call__(self, step: int) -> int:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.exits[int(torch.multinomial(self.probabilities, 1, generator=generator))]
