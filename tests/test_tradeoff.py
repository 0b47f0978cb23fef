"""The trade-off (ecom2f.tradeoff) against exact rational arithmetic, and every caller of it
(step 2's labels, step 3's scores, the evaluation's oracle) picking what it picks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from ecom2f import tradeoff

BETA = Fraction(1, 20)  # 0.05 per layer
LAYERS = np.arange(1, 7)


def exact_ideal(quality: list[list[Fraction]], cost: list[list[Fraction]], beta: Fraction) -> np.ndarray:
    """``[images]`` the first column of the largest ``q - beta * c``, in exact rationals."""
    picks = []
    for q_row, c_row in zip(quality, cost):
        utility = [q - beta * c for q, c in zip(q_row, c_row)]
        picks.append(utility.index(max(utility)))
    return np.asarray(picks)


def grid_pq(images: int, seed: int = 0) -> np.ndarray:
    """``[images, 6]`` integers s: PQ = s / 20, a 0.05 grid, rising loosely with depth so ties are common."""
    rng = np.random.default_rng(seed)
    return np.clip(np.cumsum(rng.integers(0, 3, (images, 6)), axis=1) + rng.integers(0, 8, (images, 1)), 0, 20)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ties_on_a_005_grid_go_to_the_shallower_exit(dtype):
    """PQ on a 0.05 grid, beta 0.05 per layer: a gain of exactly one step per layer is a tie, and
    the shallower exit must win, whether PQ is float64 or stored as float32 (the depth table)."""
    steps = grid_pq(3000)
    quality = (steps / 20).astype(dtype)
    cost = tradeoff.layer_costs(LAYERS, len(steps))
    exact = exact_ideal([[Fraction(int(s), 20) for s in row] for row in steps],
                        [[Fraction(int(k)) for k in LAYERS]] * len(steps), BETA)
    # Exact utilities in units of 0.05: s_k - k. Most images here have a tie at their best exit.
    scaled = steps - LAYERS
    tied = ((scaled == scaled.max(1, keepdims=True)).sum(1) > 1).mean()
    assert tied > 0.3, tied
    np.testing.assert_array_equal(tradeoff.ideal_exits(quality, cost, 0.05), exact)
    # A plain argmax of the float utilities is what broke the promise: rounding picks deeper exits.
    plain = (quality.astype(np.float64) - 0.05 * cost).argmax(axis=1)
    assert (plain != exact).mean() > 0.005


def test_ties_with_gflops_costs_stored_in_float32():
    """PQ on a 0.01 grid and GFLOPs on a 0.25 grid (both float32), beta 0.04 per GFLOP: every
    utility is a multiple of 0.01, so ties abound; the picks equal the exact ones."""
    rng = np.random.default_rng(1)
    steps = np.sort(rng.integers(0, 100, (2000, 5)), axis=1)
    quarters = np.cumsum(rng.integers(1, 9, (2000, 5)), axis=1)  # GFLOPs = quarters / 4, rising with depth
    quality, gflops = (steps / 100).astype(np.float32), (quarters / 4).astype(np.float32)
    exact = exact_ideal([[Fraction(int(s), 100) for s in row] for row in steps],
                        [[Fraction(int(q), 4) for q in row] for row in quarters], Fraction(4, 100))
    np.testing.assert_array_equal(tradeoff.ideal_exits(quality, gflops, 0.04), exact)


def test_the_tie_window_is_no_wider_than_the_inputs_rounding():
    for dtype, gap in ((np.float64, 1e-8), (np.float32, 1e-6)):
        quality = np.array([[0.5, 0.5 + gap]], dtype)
        assert tradeoff.ideal_exits(quality, np.zeros((1, 2)), 0.0).tolist() == [1], dtype
    assert tradeoff.ideal_exits(np.array([[0.5, 0.5 + 1e-10]]), np.zeros((1, 2)), 0.0).tolist() == [0]
    tolerance = tradeoff.tie_tolerance(np.array([[1.0, 0.5]], np.float32), np.array([[2.0, 3.0]]), 0.1)
    assert tolerance.shape == (1, 1) and 1e-7 < tolerance[0, 0] < 2e-7  # 2 * 2^-24 * 1.0 + 1e-9 + ~1e-17
    assert tradeoff.tie_tolerance(np.array([[0.5]]), np.array([[3.0]]), 0.1)[0, 0] == pytest.approx(1e-9)


def test_undefined_quality_counts_as_perfect():
    quality = np.array([[np.nan, 0.9, 0.95], [0.2, np.nan, 0.3]], np.float32)
    cost = tradeoff.layer_costs([1, 2, 3], 2)
    assert tradeoff.NAN_QUALITY == 1.0
    np.testing.assert_array_equal(tradeoff.defined_quality(quality),
                                  np.array([[1.0, 0.9, 0.95], [0.2, 1.0, 0.3]], np.float32))
    assert tradeoff.defined_quality(quality).dtype == np.float32
    best = tradeoff.oracle(quality, cost, 0.0)
    np.testing.assert_array_equal(best.index, [0, 1])
    np.testing.assert_array_equal(best.quality, [1.0, 1.0])
    np.testing.assert_allclose(tradeoff.utilities(quality, cost, 0.1)[0], [0.9, 0.7, 0.65], rtol=1e-6)


def test_oracle_and_choices_against_exact_means():
    steps = grid_pq(50, seed=3)
    quality = steps / 20
    cost = tradeoff.layer_costs(LAYERS, len(steps))
    best = tradeoff.oracle(quality, cost, 0.05)
    exact = exact_ideal([[Fraction(int(s), 20) for s in row] for row in steps], [[Fraction(int(k)) for k in LAYERS]]
                        * len(steps), BETA)
    rows = range(len(steps))
    mean_q = sum(Fraction(int(steps[i, exact[i]]), 20) for i in rows) / len(steps)
    mean_c = sum(Fraction(int(LAYERS[exact[i]])) for i in rows) / len(steps)
    assert best.mean_quality == pytest.approx(float(mean_q), abs=1e-12)
    assert best.mean_cost == pytest.approx(float(mean_c), abs=1e-12)
    assert best.mean_utility == pytest.approx(float(mean_q - BETA * mean_c), abs=1e-12)
    deepest = tradeoff.choose(quality, cost, 0.05, np.full(len(steps), 5))
    assert deepest.mean_cost == 6.0 and deepest.mean_quality == pytest.approx(steps[:, 5].mean() / 20)
    assert best.mean_utility >= deepest.mean_utility


def test_soft_targets_are_a_softmax_of_the_utilities():
    utility = np.array([[0.1, 0.3, 0.3], [500.0, 0.0, -500.0]])
    soft = tradeoff.soft_targets(utility, 0.1)
    denominator = math.exp(1.0) + 2 * math.exp(3.0)
    np.testing.assert_allclose(soft[0], [math.exp(1.0) / denominator, math.exp(3.0) / denominator,
                                         math.exp(3.0) / denominator], rtol=1e-12)
    np.testing.assert_allclose(soft[1], [1.0, 0.0, 0.0])  # no overflow at utility / T = 5000
    np.testing.assert_allclose(soft.sum(1), 1.0)


def test_bad_inputs_fail_with_a_message_naming_them():
    quality, cost = np.full((2, 3), 0.5), tradeoff.layer_costs([1, 2, 3], 2)
    for beta in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"beta={beta}"):
            tradeoff.ideal_exits(quality, cost, beta)
    with pytest.raises(ValueError, match="temperature=0"):
        tradeoff.soft_targets(quality, 0)
    with pytest.raises(ValueError, match="cost='flops'"):
        tradeoff.exit_costs("flops", np.array([1, 2, 3]), quality)
    with pytest.raises(ValueError, match=r"quality \(2, 3\) and cost \(2, 2\)"):
        tradeoff.utilities(quality, cost[:, :2], 0.1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        tradeoff.utilities(quality, np.where(cost == 2, np.nan, cost), 0.1)
    with pytest.raises(ValueError, match="column indices < 3"):
        tradeoff.choose(quality, cost, 0.1, np.array([0, 3]))


# ----------------------------------------------------------------------------- the callers


def test_labels_gate_scores_and_evaluation_oracle_pick_the_exact_ideal_exits():
    """One crafted table (PQ on the 0.05 grid, float32 as step 2 stores it; image ids unsorted)
    through step 2's labels, step 3's scores and the evaluation's oracle: all pick the exact ideal
    exits, ties to the shallower one."""
    from ecom2f.steps.depth.labels import derive_labels
    from ecom2f.steps.depth.table import DepthTable
    from ecom2f.steps.evaluate.summary import oracle_rows
    from ecom2f.steps.gate.data import GateTable
    from ecom2f.steps.gate.metrics import reference_metrics

    steps = grid_pq(400, seed=5)
    image_ids = np.random.default_rng(2).permutation(400) * 7 + 3
    exact = exact_ideal([[Fraction(int(s), 20) for s in row] for row in steps],
                        [[Fraction(int(k)) for k in LAYERS]] * len(steps), BETA)
    expected = pd.Series(LAYERS[exact], index=image_ids).sort_index()
    rows = pd.DataFrame({"image_id": np.repeat(image_ids, 6), "exit": np.tile(LAYERS, 400).astype(np.int16),
                         "pq": (steps / 20).astype(np.float32).ravel(),
                         "encoder_gflops": np.tile(LAYERS * 2.0, 400).astype(np.float32)})

    labels = derive_labels(DepthTable.from_rows(rows), 0.05)
    np.testing.assert_array_equal(labels["label"].to_numpy(), expected.to_numpy())

    table = DepthTable.from_rows(rows)
    features = {"image_id": table.image_ids, **{name: list(np.zeros((400, 1), np.float32))
                                                for name in ("gate_mean", "gate_max", "gate_grid")}}
    gate_table = GateTable.from_depth(DepthTable.from_rows(rows, pd.DataFrame(features)), LAYERS.tolist())
    oracle = reference_metrics(gate_table, np.arange(400), 0.05)["oracle"]
    assert oracle["layers"] == pytest.approx(expected.mean(), abs=1e-12)
    exact_pq = sum(Fraction(int(steps[i, exact[i]]), 20) for i in range(400)) / 400
    assert oracle["pq"] == pytest.approx(float(exact_pq), abs=1e-6)  # float32-stored PQ

    per_image = rows.rename(columns={"exit": "depth"}).assign(
        kind="fixed", variant=lambda f: "depth_" + f["depth"].astype(str), image_pq=(steps / 20).ravel())
    chosen = oracle_rows(per_image, beta=0.05).set_index("image_id")["depth"]
    np.testing.assert_array_equal(chosen.loc[expected.index].to_numpy(), expected.to_numpy())
