"""Step 1's progress: the losses between two reports, and the one line a report prints.

Reading a loss (``float(loss)``) waits for the GPU to finish everything queued. The loop
adds each step's losses here as device tensors and reads them all in one transfer every
``parent.log_period`` steps, the only host-device synchronisation of training.

Each report then prints one line from rank 0, in detectron2's manner::

    iter 20/900  eta 0:07:12  lr 4.00e-04  total_loss 152.3  loss@exit(2) 40.06  loss@exit(5) 38.40  img/s 10.2  max_mem 812M

``total_loss`` is what the optimizer minimised, the alpha_k-scaled loss summed over the step's
exits and averaged over the window's steps. ``loss@exit(k)`` is the loss at exit k *before*
alpha_k (ECO-M2F's alpha_k = k makes a deep exit's scaled loss k times larger, which would read
as if deeper exits were worse), averaged over the window's steps that trained exit k.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass

import torch

from ecom2f.engine.exits import exit_loss_weight

LEGEND = ("step 1 progress, one line per parent.log_period steps: total_loss is the optimised loss (alpha_k "
          "x loss, summed over the step's exits); loss@exit(k) is exit k's loss before alpha_k")


@dataclass(frozen=True)
class WindowStats:
    """What the steps since the last read trained: ``{exit: (scaled loss sum, steps that trained it)}``,
    how many steps, and at what rate."""

    sums: dict[int, tuple[float, int]]
    steps: int
    images_per_s: float


class LossWindow:
    """Sums of the per-exit losses since the last :meth:`read`, and the images trained meanwhile."""

    def __init__(self) -> None:
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}
        self.images = 0
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, losses: dict[int, torch.Tensor], images: int) -> None:
        """One optimizer step's losses (``{exit: scalar tensor}``, alpha-scaled) and its images."""
        for k, loss in losses.items():
            self._sums[k] = self._sums[k] + loss if k in self._sums else loss
            self._counts[k] = self._counts.get(k, 0) + 1
        self.images += images
        self.steps += 1

    def read_stats(self, step: int) -> WindowStats:
        """The window's :class:`WindowStats`; resets.

        Raises FloatingPointError on a non-finite loss, naming the step and the exits.
        """
        exits = sorted(self._sums)
        values = torch.stack([self._sums[k].float() for k in exits]).tolist() if exits else []  # the one sync
        sums = {k: (value, self._counts[k]) for k, value in zip(exits, values)}
        stats = WindowStats(sums, self.steps, self.images / max(time.perf_counter() - self.started, 1e-9))
        self.__init__()
        if not all(math.isfinite(total) for total, _ in sums.values()):
            means = {k: total / count for k, (total, count) in sums.items()}
            raise FloatingPointError(f"parent training diverged before step {step}: mean losses per exit {means}")
        return stats

    def read(self, step: int) -> tuple[dict[int, tuple[float, int]], float]:
        """``({exit: (loss sum, steps that trained it)}, images per second)`` of the window; resets."""
        stats = self.read_stats(step)
        return stats.sums, stats.images_per_s


def window_loss_metrics(stats: WindowStats, alpha: str) -> dict[str, float]:
    """The report's losses of a window: ``total_loss`` (the optimised loss per step),
    ``loss_exit_<k>`` (alpha_k-scaled, as optimised) and ``raw_loss_exit_<k>`` (before alpha_k)."""
    metrics = {"total_loss": sum(total for total, _ in stats.sums.values()) / max(stats.steps, 1)}
    for k, (total, count) in stats.sums.items():
        metrics[f"loss_exit_{k}"] = total / count
        metrics[f"raw_loss_exit_{k}"] = total / count / exit_loss_weight(k, alpha)
    return metrics


def max_memory_mb(device: torch.device) -> float:
    """Peak memory so far: the device's allocated memory on CUDA, else the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def eta_seconds(metrics: dict) -> float | None:
    """Seconds to ``max_iter`` at the window's rate: the images still to train over images per second."""
    step, max_iter, rate = metrics.get("step"), metrics.get("max_iter"), metrics.get("images_per_s")
    if not (step and max_iter and rate and metrics.get("samples_consumed")):
        return None
    images_per_step = metrics["samples_consumed"] / step
    return max(max_iter - step, 0) * images_per_step / rate


def _exit_losses(metrics: dict) -> list[str]:
    raw = sorted((int(name.rsplit("_", 1)[1]), value) for name, value in metrics.items()
                 if name.startswith("raw_loss_exit_"))
    if raw:
        return [f"loss@exit({k}) {value:.4g}" for k, value in raw]
    scaled = sorted((int(name.rsplit("_", 1)[1]), value) for name, value in metrics.items()
                    if name.startswith("loss_exit_"))  # a loop that does not report the unscaled losses
    return [f"scaled_loss@exit({k}) {value:.4g}" for k, value in scaled]


def progress_line(metrics: dict) -> str:
    """The one line of a report (see the module docstring); keys the report lacks are left out."""
    step = metrics["step"]
    parts = [f"iter {step}/{metrics['max_iter']}" if metrics.get("max_iter") else f"iter {step}"]
    eta = eta_seconds(metrics)
    if eta is not None:
        parts.append(f"eta {datetime.timedelta(seconds=round(eta))}")
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.2e}")
    if "total_loss" in metrics:
        parts.append(f"total_loss {metrics['total_loss']:.4g}")
    parts += _exit_losses(metrics)
    if "images_per_s" in metrics:
        parts.append(f"img/s {metrics['images_per_s']:.3g}")
    if "max_mem_mb" in metrics:
        parts.append(f"max_mem {metrics['max_mem_mb']:.0f}M")
    return "  ".join(parts)
