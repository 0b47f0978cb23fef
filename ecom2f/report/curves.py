"""The fixed-depth curve: what choosing the depth by cost alone realises, read two ways.

A curve is a set of points ``(x [D] mean cost, y [D] quality)``, one per fixed depth. Sending a
share of the images to one depth and the rest to another realises any mean cost between the two
(the straight line between the points, for *any* two depths, not only adjacent ones), and a
point cheaper than the cost and better is realised too (spend the rest on nothing). So the best
quality at cost ``c`` is the upper concave envelope of the points, made flat after the best one:
non-decreasing in ``c``, and :func:`cost_at_quality` is its inverse. Where the points already
bend downwards (each deeper layer buys less) this is the plain straight-line interpolation; where
a deeper depth dips (depth 5 better than depth 6, or depth 3 worse than depths 2 and 4), the
envelope bridges the dip, which is the stricter comparison for a gate.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COST_TOLERANCE", "cost_at_quality", "frontier", "quality_at_cost"]

# Two mean costs closer than this are the same cost (float sums of per-image GFLOPs).
COST_TOLERANCE = 1e-9


def _ordered(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or not len(x):
        raise ValueError(f"a curve needs matching 1-d costs and qualities, got {x.shape} and {y.shape}")
    order = np.lexsort((-y, x))  # by cost; at equal cost the better point first
    return x[order], y[order]


def frontier(x, y) -> tuple[np.ndarray, np.ndarray]:
    """The corners ``(cost [H], quality [H])`` of the best quality realisable at each cost: the upper
    concave envelope of the points from the cheapest one to the best one (the cheapest of the best),
    ascending in both; beyond its last corner the quality stays flat."""
    x, y = _ordered(x, y)
    best = int(np.argmax(y))  # first maximum in cost order: the cheapest of the best
    corners: list[tuple[float, float]] = []
    for point in zip(x[:best + 1], y[:best + 1]):
        if corners and point[0] <= corners[-1][0] + COST_TOLERANCE:
            continue  # the same cost as the last corner, and no better (the better one came first)
        while len(corners) >= 2:
            (ax, ay), (bx, by) = corners[-2], corners[-1]
            # Drop the middle corner when it lies on or below the line from the one before to the new point.
            if (by - ay) * (point[0] - ax) <= (point[1] - ay) * (bx - ax):
                corners.pop()
            else:
                break
        corners.append(point)
    hx, hy = (np.array(v, np.float64) for v in zip(*corners))
    return hx, hy


def quality_at_cost(x, y, cost: float) -> float:
    """The best quality the curve ``(x [D], y [D])`` realises at mean cost ``cost``; NaN below its
    cheapest point (no mix of fixed depths is that cheap)."""
    hx, hy = frontier(x, y)
    if cost < hx[0] - COST_TOLERANCE:
        return np.nan
    return float(np.interp(min(max(cost, hx[0]), hx[-1]), hx, hy))


def cost_at_quality(x, y, quality: float) -> float:
    """The least mean cost at which the curve ``(x [D], y [D])`` realises ``quality``: the cheapest
    point if it already does, the envelope's crossing otherwise; ``inf`` if no fixed depth reaches
    ``quality`` (the matched-quality cost does not exist)."""
    hx, hy = frontier(x, y)
    if hy[0] >= quality:
        return float(hx[0])
    for i in range(1, len(hx)):
        if hy[i] >= quality:  # every corner before stays below: the segment from corner i-1 crosses here
            return float(hx[i - 1] + (quality - hy[i - 1]) / (hy[i] - hy[i - 1]) * (hx[i] - hx[i - 1]))
    return float("inf")
