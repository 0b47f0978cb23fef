"""The paired bootstrap of dataset-PQ differences: equal to scipy's bootstrap of a plain mean
where dataset PQ is one (crafted), a known difference recovered, degenerate differences, and the
comparisons built on it (gate vs the fixed-depth curve, vs full depth, GFLOPs at matched PQ)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from ecom2f.evaluation import PQStat
from ecom2f.report.bootstrap import ImageStats, dataset_pq, paired_bootstrap
from ecom2f.report.comparisons import scene_depth_gain, versus_fixed
from ecom2f.report.curves import cost_at_quality, quality_at_cost


def _rows(iou: dict[str, np.ndarray], gflops: dict[str, float], depth: dict[str, int]) -> pd.DataFrame:
    """Per-image rows where every image has one segment of category 0 matched with IoU ``iou[variant][i]``:
    dataset PQ is then exactly the mean IoU."""
    rows = []
    for name, values in iou.items():
        for i, value in enumerate(values):
            rows.append({"image_id": str(i), "variant": name, "depth": depth[name], "encoder_gflops": gflops[name],
                         "total_gflops": 10 + gflops[name],
                         "pq_stat": json.dumps({0: {"iou": float(value), "tp": 1, "fp": 0, "fn": 0}})})
    return pd.DataFrame(rows)


def test_equals_scipy_bootstrap_of_the_per_image_differences():
    """With one matched segment per image, dataset PQ is the mean IoU, so the difference of two
    variants' dataset PQs is the mean of per-image differences: the same seed must give scipy's own
    interval for that mean, to rounding."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 0.9, 40)
    b = np.clip(a + rng.normal(0.03, 0.05, 40), 0, 1)
    stats = ImageStats.from_rows(_rows({"a": a, "b": b}, {"a": 1.0, "b": 2.0}, {"a": 1, "b": 2}))
    estimate, low, high = paired_bootstrap(len(stats), lambda w: (stats.pq(w, ["b"]) - stats.pq(w, ["a"])).T,
                                           resamples=1000, seed=0)
    # Images are sorted as strings ("0", "1", "10", ...): reorder the reference the same way.
    order = np.argsort(np.arange(40).astype(str))
    reference = scipy.stats.bootstrap((100 * (b - a)[order],), np.mean, n_resamples=1000, method="BCa",
                                      rng=np.random.default_rng(0))
    assert estimate[0] == pytest.approx(100 * (b - a).mean())
    assert low[0] == pytest.approx(reference.confidence_interval.low, rel=1e-9)
    assert high[0] == pytest.approx(reference.confidence_interval.high, rel=1e-9)


def test_a_known_difference_is_recovered_and_a_constant_one_is_exact():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 0.8, 60)
    better = a.copy()
    better[:20] += 0.15  # a third of the images gain 0.15: +5 PQ points on the dataset
    stats = ImageStats.from_rows(_rows({"a": a, "b": better, "c": a + 0.1}, {"a": 1.0, "b": 1.0, "c": 1.0},
                                       {"a": 1, "b": 1, "c": 1}))
    estimate, low, high = paired_bootstrap(
        len(stats), lambda w: np.stack([stats.pq(w, ["b"])[:, 0] - stats.pq(w, ["a"])[:, 0],
                                        stats.pq(w, ["c"])[:, 0] - stats.pq(w, ["a"])[:, 0]]))
    assert estimate[0] == pytest.approx(5.0) and 0 < low[0] < 5.0 < high[0] < 10.0
    # Every image gains exactly 0.1: every resample says +10, so does the interval.
    assert estimate[1] == pytest.approx(10.0) and low[1] == pytest.approx(10.0) and high[1] == pytest.approx(10.0)


def test_dataset_pq_equals_pq_stat_summary():
    """The vectorised dataset PQ against PQStat.summary on random sums with FP, FN and empty categories."""
    rng = np.random.default_rng(1)
    sums = np.zeros((5, 4))
    stat = {}
    for c in range(4):  # category 4 stays empty
        tp, fp, fn = rng.integers(0, 5, 3)
        iou = tp * rng.uniform(0.5, 1.0)
        sums[c] = [iou, tp, fp, fn]
        stat[c] = {"iou": iou, "tp": int(tp), "fp": int(fp), "fn": int(fn)}
    categories = {c: {"isthing": 1} for c in range(5)}
    assert dataset_pq(sums) == pytest.approx(PQStat.from_dict(stat).summary(categories)["All"]["pq"], rel=1e-12)
    assert np.isnan(dataset_pq(np.zeros((3, 4))))


def test_every_variant_must_score_every_image():
    rows = _rows({"a": np.full(3, 0.5), "b": np.full(3, 0.6)}, {"a": 1.0, "b": 2.0}, {"a": 1, "b": 2})
    with pytest.raises(ValueError, match="variant 'b' has 2 rows for 3 images"):
        ImageStats.from_rows(rows.iloc[:-1])


def test_gate_versus_the_fixed_depth_curve_and_matched_gflops():
    """Fixed depths 1..3 at 1, 2, 3 GFLOPs with PQ 50 / 60 / 64; a gate at 2.5 GFLOPs with PQ 66 sits
    4 points above the curve (62 at 2.5), 2 above full depth, and the curve never reaches 66: no
    matched cost. A gate at 2 GFLOPs with PQ 55 is 5 below the curve; the curve reaches 55 at 1.5."""
    n = 30
    iou = {"depth_1": np.full(n, 0.50), "depth_2": np.full(n, 0.60), "depth_3": np.full(n, 0.64),
           "good": np.full(n, 0.66), "poor": np.full(n, 0.55)}
    gflops = {"depth_1": 1.0, "depth_2": 2.0, "depth_3": 3.0, "good": 2.5, "poor": 2.0}
    stats = ImageStats.from_rows(_rows(iou, gflops, {k: int(v) for k, v in gflops.items()}))
    table = versus_fixed(stats, ["depth_1", "depth_2", "depth_3"], "depth_3", ["good", "poor"]).set_index("variant")
    assert table.loc["good", "curve_pq"] == pytest.approx(quality_at_cost([1, 2, 3], [50, 60, 64], 2.5)) == 62.0
    assert table.loc["good", "vs_curve"] == pytest.approx(4.0) and table.loc["good", "vs_curve_low"] == pytest.approx(4.0)
    assert table.loc["good", "vs_full"] == pytest.approx(2.0)
    assert np.isinf(table.loc["good", "matched_gflops"])
    assert table.loc["poor", "vs_curve"] == pytest.approx(-5.0)
    assert table.loc["poor", "matched_gflops"] == pytest.approx(cost_at_quality([1, 2, 3], [50, 60, 64], 55.0)) == 1.5
    assert table.loc["poor", "saved_gflops"] == pytest.approx(-0.5)
    assert table.loc["poor", "saved_share"] == pytest.approx(-0.5 / 3.0)


def test_scene_gain_compares_depth_gains_per_scene():
    n = 40
    scene = np.array(["cluttered", "simple"] * (n // 2))
    shallow = np.where(scene == "cluttered", 0.40, 0.80)
    deep = np.where(scene == "cluttered", 0.55, 0.81)
    stats = ImageStats.from_rows(_rows({"depth_1": shallow, "depth_6": deep}, {"depth_1": 1.0, "depth_6": 6.0},
                                       {"depth_1": 1, "depth_6": 6}))
    order = np.argsort(np.arange(n).astype(str))  # the stats' image order
    gain = scene_depth_gain(stats, scene[order], "depth_1", "depth_6")
    assert gain.loc["cluttered", "gain"] == pytest.approx(15.0)
    assert gain.loc["simple", "gain"] == pytest.approx(1.0)
    assert gain.loc["cluttered - simple", "gain"] == pytest.approx(14.0)
    assert gain.loc["cluttered - simple", "low"] == pytest.approx(14.0)  # no per-image noise: exact
    assert gain["images"].tolist() == [20, 20, 40]
