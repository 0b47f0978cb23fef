"""Per-exit losses between two reports, kept on the device until a report reads them.

Reading a loss (``float(loss)``) waits for the GPU to finish everything queued. The loop
adds each step's losses here as device tensors and reads them all in one transfer every
``parent.log_period`` steps, the only host-device synchronisation of training.
"""

from __future__ import annotations

import math
import time

import torch


class LossWindow:
    """Sums of the per-exit losses since the last :meth:`read`, and the images trained meanwhile."""

    def __init__(self) -> None:
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}
        self.images = 0
        self.started = time.perf_counter()

    def add(self, losses: dict[int, torch.Tensor], images: int) -> None:
        for k, loss in losses.items():
            self._sums[k] = self._sums[k] + loss if k in self._sums else loss
            self._counts[k] = self._counts.get(k, 0) + 1
        self.images += images

    def read(self, step: int) -> tuple[dict[int, tuple[float, int]], float]:
        """``({exit: (loss sum, steps that trained it)}, images per second)`` of the window; resets.

        Raises FloatingPointError on a non-finite loss, naming the step and the exits.
        """
        exits = sorted(self._sums)
        values = torch.stack([self._sums[k].float() for k in exits]).tolist() if exits else []  # the one sync
        sums = {k: (value, self._counts[k]) for k, value in zip(exits, values)}
        rate = self.images / max(time.perf_counter() - self.started, 1e-9)
        self.__init__()
        if not all(math.isfinite(total) for total, _ in sums.values()):
            means = {k: total / count for k, (total, count) in sums.items()}
            raise FloatingPointError(f"parent training diverged before step {step}: mean losses per exit {means}")
        return sums, rate
