"""Learning-rate multipliers of the Mask2Former recipes: warmup, then multi-step or poly."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Literal


def lr_multiplier(
    step: int,
    max_iter: int,
    schedule: Literal["multistep", "poly", "constant"] = "multistep",
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0,
) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based), as detectron2 computes it.

    multistep: ``gamma ** (number of steps <= step)`` (COCO: steps 327,778 / 355,092 of
    368,750). poly: ``(1 - step / max_iter) ** power`` (Cityscapes: power 0.9). Linear
    warmup multiplies by ``warmup_factor * (1 - a) + a`` with ``a = step / warmup_iters``.
    """
    if max_iter <= 0:
        raise ValueError(f"lr_multiplier: max_iter must be positive, got {max_iter}")
    if schedule == "multistep":
        value = gamma ** bisect.bisect_right(sorted(steps), step)
    elif schedule == "poly":
        value = max(0.0, 1.0 - min(step, max_iter) / max_iter) ** power
    elif schedule == "constant":
        value = 1.0
    else:
        raise ValueError(f"lr_multiplier: unknown schedule {schedule!r}; use 'multistep', 'poly' or 'constant'")
    if step < warmup_iters:
        alpha = step / warmup_iters
        value *= warmup_factor * (1 - alpha) + alpha
    return value
