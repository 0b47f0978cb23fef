"""The fixed-depth curve read both ways: quality at a cost, and the cost of a quality (the
matched-PQ GFLOPs a gate saves), on crafted curves with hand-derived values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecom2f.report.curves import cost_at_quality, frontier, quality_at_cost

X, Y = [1.0, 2.0, 3.0], [40.0, 50.0, 55.0]


@pytest.mark.parametrize(("quality", "cost"), [(45.0, 1.5), (50.0, 2.0), (52.5, 2.5), (55.0, 3.0), (30.0, 1.0)])
def test_cost_at_quality_interpolates_between_adjacent_depths(quality, cost):
    assert cost_at_quality(X, Y, quality) == pytest.approx(cost)
    if quality >= Y[0]:
        assert quality_at_cost(X, Y, cost) == pytest.approx(quality)  # the inverse of the curve


def test_a_quality_no_fixed_depth_reaches_has_no_matched_cost():
    assert math.isinf(cost_at_quality(X, Y, 55.01))


def test_a_dip_in_the_curve_is_bridged_by_mixing_the_depths_around_it():
    """Depth 3 (50) is worse than depth 2 (52): sending half the images to depth 2 and half to depth 4
    (56) costs 3 and realises 54, so the curve is the line from depth 2 to depth 4; 53 is first
    reached on it at 2.5, and 51 on the line from depth 1 (40) to depth 2 at 1 + 11/12."""
    x, y = [1.0, 2.0, 3.0, 4.0], [40.0, 52.0, 50.0, 56.0]
    assert quality_at_cost(x, y, 3.0) == pytest.approx(54.0)
    assert quality_at_cost(x, y, 3.2) == pytest.approx(54.4)
    assert cost_at_quality(x, y, 51.0) == pytest.approx(1 + 11 / 12)
    assert cost_at_quality(x, y, 53.0) == pytest.approx(2.5)
    # Points in any order: the curve sorts them by cost.
    assert cost_at_quality(x[::-1], y[::-1], 53.0) == pytest.approx(2.5)
    np.testing.assert_allclose(np.stack(frontier(x, y)), [[1, 2, 4], [40, 52, 56]])


def test_a_worse_deeper_depth_leaves_the_curve_flat():
    """Depth 6 worse than depth 5 (the demo's case): past depth 5 the curve keeps depth 5's quality."""
    x, y = [1.0, 2.0, 3.0], [40.0, 50.0, 45.0]
    assert quality_at_cost(x, y, 2.5) == pytest.approx(50.0) == quality_at_cost(x, y, 3.0)
    assert cost_at_quality(x, y, 50.0) == pytest.approx(2.0)
    # Two depths at the same cost: the better one is the curve's.
    assert quality_at_cost([1.0, 1.0, 2.0], [30.0, 40.0, 50.0], 1.5) == pytest.approx(45.0)


def test_below_the_cheapest_depth_the_curve_is_undefined():
    assert math.isnan(quality_at_cost(X, Y, 0.5))
    assert quality_at_cost(X, Y, 10.0) == pytest.approx(55.0)  # beyond the deepest: its quality


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="matching 1-d"):
        cost_at_quality([1.0, 2.0], [40.0], 45.0)
