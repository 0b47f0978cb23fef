"""ECO-M2F's quality/cost trade-off, written once.

An image has a quality ``q_k`` (per-image PQ, mIoU, ...) and a cost ``c_k`` (encoder layers, or
encoder GFLOPs) at each exit ``k``. For a trade-off ``beta`` (quality given up per unit of cost)
the utility of exit ``k`` is ``u_k = q_k - beta * c_k``; the image's ideal exit is
``argmax_k u_k`` and the oracle sends every image to its ideal exit. Step 2's labels, step 3's
training targets and scores, the evaluation's oracle and the report all ask this module.

Arrays are ``[images, exits]`` with the exits in ascending order (shallower first), so
"the shallower exit" is the lower column.

Two rules decide what the formula alone leaves open:

- An undefined quality (NaN: the image has no ground-truth segment and the exit predicts none,
  nothing to get wrong) counts as :data:`NAN_QUALITY` = 1, perfect. Zero would punish the exits
  that correctly predict nothing relative to exits that hallucinate segments (PQ 0).
- Ties go to the shallower exit. Utilities are compared in float64, and two utilities are tied
  when they differ by at most :data:`TIE_TOLERANCE` plus the rounding of their inputs: the depth
  table stores quality and GFLOPs as float32, whose rounding (up to 2^-24 of the value, 6e-8 for a
  PQ near 1) would otherwise decide ties such as PQ 0.60 at 2 layers vs 0.65 at 3 with beta 0.05.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "COST_UNITS", "NAN_QUALITY", "TIE_TOLERANCE", "Choice", "check_beta", "choose", "defined_quality", "exit_costs",
    "first_best", "ideal_exits", "layer_costs", "oracle", "soft_targets", "tie_tolerance", "utilities",
]

NAN_QUALITY = 1.0
TIE_TOLERANCE = 1e-9
COST_UNITS = ("layers", "gflops")


def check_beta(beta: float) -> float:
    """``beta`` as a float, or a ValueError naming it: a finite number >= 0."""
    if not (isinstance(beta, int | float | np.floating | np.integer) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta={beta}: must be a finite number >= 0 (quality given up per unit of cost)")
    return float(beta)


def defined_quality(quality: np.ndarray) -> np.ndarray:
    """``quality [images, exits]`` with NaN (undefined) replaced by :data:`NAN_QUALITY`; dtype kept."""
    quality = np.asarray(quality)
    return np.where(np.isnan(quality), quality.dtype.type(NAN_QUALITY), quality)


def layer_costs(exits: np.ndarray, images: int) -> np.ndarray:
    """``[images, exits]`` float64: each exit's number of encoder layers (read-only broadcast)."""
    return np.broadcast_to(np.asarray(exits, dtype=np.float64), (images, len(exits)))


def exit_costs(unit: str, exits: np.ndarray, gflops: np.ndarray) -> np.ndarray:
    """``[images, exits]`` cost of each exit in ``unit``: its layer count, or its encoder GFLOPs
    (``gflops [images, exits]``, returned as given)."""
    if unit == "layers":
        return layer_costs(exits, len(gflops))
    if unit == "gflops":
        return np.asarray(gflops)
    raise ValueError(f"cost={unit!r}: choose one of {COST_UNITS}")


def _pair(quality: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    quality, cost = defined_quality(quality), np.asarray(cost)
    if quality.ndim != 2 or quality.shape != cost.shape:
        raise ValueError(f"quality {quality.shape} and cost {cost.shape} must both be [images, exits]")
    if not np.isfinite(cost).all():
        raise ValueError("the exit costs hold NaN or infinite values; the depth table is damaged: rebuild step 2")
    return quality, cost


def utilities(quality: np.ndarray, cost: np.ndarray, beta: float) -> np.ndarray:
    """``[images, exits]`` float64 ``q_k - beta * c_k`` (undefined quality counts as :data:`NAN_QUALITY`)."""
    quality, cost = _pair(quality, cost)
    return quality.astype(np.float64) - check_beta(beta) * cost.astype(np.float64)


def _unit_roundoff(values: np.ndarray) -> float:
    """Largest relative rounding error of storing a real number in ``values``' dtype (0: integers)."""
    return float(np.finfo(values.dtype).eps) / 2 if np.issubdtype(values.dtype, np.floating) else 0.0


def tie_tolerance(quality: np.ndarray, cost: np.ndarray, beta: float) -> np.ndarray:
    """``[images, 1]``: how far apart two utilities of an image may be and still be a tie.

    :data:`TIE_TOLERANCE` plus twice the largest rounding the inputs can carry in that image
    (``|q| * roundoff(q.dtype) + beta * |c| * roundoff(c.dtype)``): float64 inputs add ~1e-16,
    the depth table's float32 ones ~1.2e-7 for a PQ near 1.
    """
    quality, cost = _pair(quality, cost)
    rounding = (np.abs(quality.astype(np.float64)) * _unit_roundoff(quality)
                + check_beta(beta) * np.abs(cost.astype(np.float64)) * _unit_roundoff(cost))
    return TIE_TOLERANCE + 2 * rounding.max(axis=1, keepdims=True, initial=0.0)


def first_best(utility: np.ndarray, tolerance: float | np.ndarray | None = None) -> np.ndarray:
    """``[images]`` int64: per row of ``utility [images, exits]``, the first (shallowest) column
    within ``tolerance`` (a scalar or ``[images, 1]``) of the row's maximum.

    ``tolerance`` None: :data:`TIE_TOLERANCE` plus twice the rounding of ``utility``'s own dtype at
    the row's largest magnitude (float32 utilities: ~1.2e-7 near 1). :func:`ideal_exits` passes
    the rounding of the inputs instead (:func:`tie_tolerance`).
    """
    utility = np.asarray(utility)
    if utility.ndim != 2 or utility.shape[1] == 0:
        raise ValueError(f"utility {utility.shape} must be [images, exits] with at least one exit")
    if np.isnan(utility).any():
        raise ValueError("the utilities hold NaN: fill undefined quality first (defined_quality)")
    if tolerance is None:
        largest = np.abs(utility.astype(np.float64)).max(axis=1, keepdims=True)
        tolerance = TIE_TOLERANCE + 2 * _unit_roundoff(utility) * largest
    utility = utility.astype(np.float64)
    best = utility.max(axis=1, keepdims=True)
    return np.argmax(utility >= best - tolerance, axis=1)


def ideal_exits(quality: np.ndarray, cost: np.ndarray, beta: float) -> np.ndarray:
    """``[images]`` int64 column index of ``argmax_k (q_k - beta * c_k)``, ties to the shallower exit."""
    return first_best(utilities(quality, cost, beta), tie_tolerance(quality, cost, beta))


def soft_targets(utility: np.ndarray, temperature: float) -> np.ndarray:
    """``[images, exits]`` float64 ``softmax(utility / temperature)`` per image (a distribution over exits)."""
    if not (isinstance(temperature, int | float | np.floating) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature}: must be a finite number > 0")
    scaled = np.asarray(utility, dtype=np.float64) / temperature
    scaled = np.exp(scaled - scaled.max(axis=1, keepdims=True))  # shifted: no overflow, same softmax
    return scaled / scaled.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One exit per image and what it realises: ``index``, ``quality``, ``cost``, ``utility`` ``[images]``
    (``index`` into the exits' columns; quality with undefined values counted as :data:`NAN_QUALITY`)."""

    index: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    utility: np.ndarray

    @property
    def mean_quality(self) -> float:
        return float(self.quality.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())

    @property
    def mean_utility(self) -> float:
        return float(self.utility.mean())


def choose(quality: np.ndarray, cost: np.ndarray, beta: float, index: np.ndarray) -> Choice:
    """What picking column ``index [images]`` for each image realises, in float64."""
    quality, cost = _pair(quality, cost)
    index = np.asarray(index, dtype=np.int64)
    if index.shape != (len(quality),) or (len(index) and not 0 <= index.min() <= index.max() < quality.shape[1]):
        raise ValueError(f"index {index.shape} must be [images] = [{len(quality)}] column indices < {quality.shape[1]}")
    rows = np.arange(len(index))
    picked_quality = quality[rows, index].astype(np.float64)
    picked_cost = cost[rows, index].astype(np.float64)
    return Choice(index, picked_quality, picked_cost, picked_quality - check_beta(beta) * picked_cost)


def oracle(quality: np.ndarray, cost: np.ndarray, beta: float) -> Choice:
    """Every image at its ideal exit (:func:`ideal_exits`) for ``beta``, and what that realises."""
    return choose(quality, cost, beta, ideal_exits(quality, cost, beta))
