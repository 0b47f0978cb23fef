"""The report's comparisons, each a PQ difference with its paired-bootstrap 95% interval.

- a gate (or the oracle) against the fixed-depth curve at its own mean encoder GFLOPs, and against
  the full-depth model;
- the encoder GFLOPs a gate saves at matched PQ: the cost at which the fixed-depth curve reaches the
  gate's PQ, minus the gate's cost (the paper's headline quantity; a point estimate);
- on data with scene kinds: how much more the deepest fixed exit gains over the shallowest on
  cluttered scenes than on simple ones.

Costs are mean encoder GFLOPs per image, the axis of the Pareto plot; with one image size that is
the mean layer count times one layer's GFLOPs, so "at equal GFLOPs" and "at equal layers" agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ecom2f.report.bootstrap import ImageStats, paired_bootstrap
from ecom2f.report.curves import COST_TOLERANCE, cost_at_quality, quality_at_cost

__all__ = ["oracle_beats_fixed", "oracle_over_gates", "oracle_vs_fixed", "scene_depth_gain", "versus_fixed"]


def _curve_at(pq: np.ndarray, cost: np.ndarray, fixed: int, compared: int) -> np.ndarray:
    """``[compared, R]``: the fixed-depth curve (columns ``:fixed`` of ``pq``/``cost [R, fixed + compared]``)
    at each compared variant's cost (the columns after)."""
    out = np.empty((compared, len(pq)))
    for r in range(len(pq)):
        for j in range(compared):
            out[j, r] = quality_at_cost(cost[r, :fixed], pq[r, :fixed], cost[r, fixed + j])
    return out


def versus_fixed(stats: ImageStats, fixed: Sequence[str], full: str, compared: Sequence[str],
                 resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per compared variant (gates, the oracle): its PQ (%) and mean encoder GFLOPs, the
    fixed-depth curve at that cost, ``vs_curve`` and ``vs_full`` (PQ points) with ``_low`` / ``_high``
    95% bounds, and ``matched_gflops`` / ``saved_gflops`` / ``saved_share`` (of the full depth's
    encoder GFLOPs) at matched PQ (``inf`` matched cost: no fixed depth reaches the gate's PQ)."""
    fixed, compared = list(fixed), list(compared)
    if not compared:
        return pd.DataFrame()
    names = fixed + compared
    full_column = fixed.index(full)

    def statistic(weights: np.ndarray) -> np.ndarray:
        pq, cost = stats.pq(weights, names), stats.mean_encoder_gflops(weights, names)
        theirs = pq[:, len(fixed):].T
        return np.concatenate([theirs - _curve_at(pq, cost, len(fixed), len(compared)),
                               theirs - pq[:, full_column][None, :]])

    estimate, low, high = paired_bootstrap(len(stats), statistic, resamples, seed)
    ones = np.ones((1, len(stats)))
    pq, cost = stats.pq(ones, names)[0], stats.mean_encoder_gflops(ones, names)[0]
    k = len(compared)
    rows = []
    for j, name in enumerate(compared):
        own_pq, own_cost = pq[len(fixed) + j], cost[len(fixed) + j]
        matched = cost_at_quality(cost[:len(fixed)], pq[:len(fixed)], own_pq)
        saved = 0.0 if abs(matched - own_cost) < COST_TOLERANCE else matched - own_cost
        rows.append({
            "variant": name, "pq": own_pq, "mean_encoder_gflops": own_cost,
            "curve_pq": own_pq - estimate[j], "vs_curve": estimate[j], "vs_curve_low": low[j], "vs_curve_high": high[j],
            "vs_full": estimate[k + j], "vs_full_low": low[k + j], "vs_full_high": high[k + j],
            "matched_gflops": matched, "saved_gflops": saved,
            "saved_share": saved / cost[full_column],
        })
    return pd.DataFrame(rows)


def scene_depth_gain(stats: ImageStats, scene: np.ndarray, shallow: str, deep: str, resamples: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """How much the ``deep`` fixed depth gains over the ``shallow`` one (PQ points) on each scene kind,
    and the cluttered-minus-simple difference of those gains, with 95% bounds.

    ``scene [n]``: each image's scene kind (``simple`` / ``cluttered``), aligned with ``stats.image_ids``.
    Rows: ``cluttered``, ``simple``, ``cluttered - simple``; columns ``gain``, ``low``, ``high``, ``images``.
    """
    scene = np.asarray(scene)
    masks = [scene == "cluttered", scene == "simple"]
    if not all(m.any() for m in masks):
        raise ValueError("the scene comparison needs both simple and cluttered images")

    def statistic(weights: np.ndarray) -> np.ndarray:
        gains = []
        for mask in masks:
            pq = stats.pq(weights * mask, [shallow, deep])
            gains.append(pq[:, 1] - pq[:, 0])
        return np.stack([*gains, gains[0] - gains[1]])

    estimate, low, high = paired_bootstrap(len(stats), statistic, resamples, seed)
    return pd.DataFrame({"gain": estimate, "low": low, "high": high,
                         "images": [int(masks[0].sum()), int(masks[1].sum()), len(scene)]},
                        index=pd.Index(["cluttered", "simple", "cluttered - simple"], name="scenes"))


def _oracle_points(summary: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    curve = summary[summary["kind"].isin(["oracle", "oracle_curve"])]
    curve = curve.groupby("mean_encoder_gflops", as_index=False)["pq"].max().sort_values("mean_encoder_gflops")
    return curve["mean_encoder_gflops"].to_numpy(np.float64), curve["pq"].to_numpy(np.float64)


def oracle_vs_fixed(summary: pd.DataFrame) -> pd.DataFrame:
    """For each fixed depth: the oracle curve's best PQ at that depth's mean encoder GFLOPs (its beta
    sweep joined by straight lines: mixing two betas' choices image by image realises any cost between
    them), and the margin ``oracle - fixed`` (fractions, as in ``summary``). The shallowest fixed depth
    ties the oracle by construction: at its cost every image must take it."""
    x, y = _oracle_points(summary)
    rows = []
    for _, row in summary[summary["kind"] == "fixed"].sort_values("mean_encoder_gflops").iterrows():
        oracle = quality_at_cost(x, y, row["mean_encoder_gflops"]) if len(x) else np.nan
        rows.append({"variant": row["variant"], "mean_layers": row["mean_layers"], "fixed_pq": row["pq"],
                     "oracle_pq_at_equal_cost": oracle, "margin": oracle - row["pq"]})
    return pd.DataFrame(rows)


def oracle_beats_fixed(comparison: pd.DataFrame) -> bool:
    """True when the oracle is strictly better than every fixed depth but the shallowest (a tie by
    construction) at equal cost."""
    if comparison.empty or comparison["margin"].isna().any():
        return False
    ordered = comparison.sort_values("mean_layers")
    return bool((ordered["margin"].iloc[1:] > 0).all() and ordered["margin"].iloc[0] >= -1e-12)


def oracle_over_gates(summary: pd.DataFrame) -> pd.Series:
    """Per gate: the oracle curve's PQ at the gate's mean encoder GFLOPs minus the gate's PQ (fractions)."""
    x, y = _oracle_points(summary)
    gates = summary[summary["kind"] == "gate"]
    if not len(x):
        return pd.Series(np.nan, index=gates["variant"])
    return pd.Series([quality_at_cost(x, y, c) - q for c, q in zip(gates["mean_encoder_gflops"], gates["pq"])],
                     index=gates["variant"])
