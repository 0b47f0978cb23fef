"""Step 2's labels: the ideal exit of each image for a quality/cost trade-off, and their histograms.

y = argmax_k (q_k - beta * cost_k) over the exits k of the depth table (:mod:`ecom2f.tradeoff`:
ties go to the shallower exit, an undefined quality counts as perfect). Everything runs on the
table's dense ``[images, exits]`` arrays, so 118k images x 5 exits take milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ecom2f import tradeoff
from ecom2f.steps.depth.table import DepthTable

__all__ = ["as_depth_table", "derive_labels", "format_labels_summary", "label_histogram", "labels_summary"]


def as_depth_table(table) -> DepthTable:
    """A :class:`DepthTable`, or long depth rows (a DataFrame, or ``load_depth_table``'s pair) pivoted into one."""
    if isinstance(table, DepthTable):
        return table
    if isinstance(table, tuple):
        table = table[0]
    return DepthTable.from_rows(table)


def _chosen(table: DepthTable, beta: float, cost: str, quality: str, exits: Sequence[int] | None):
    """``(table at the chosen exits, cost [images, exits], the oracle's Choice)``."""
    beta = tradeoff.check_beta(beta)
    table = as_depth_table(table)
    if exits is not None:
        table = table.select_exits(exits)
    costs = table.cost(cost)
    return table, costs, tradeoff.oracle(table.quality(quality), costs, beta)


def derive_labels(
    table,
    beta: float,
    cost: str = "layers",
    temperature: float | None = None,
    quality: str = "pq",
    exits: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per image, the exit maximising ``q_k - beta * cost_k``.

    Args:
        table: the depth table (:func:`~ecom2f.steps.depth.table.read_depth_table`), or its long rows.
        beta: quality given up per unit of cost (per layer, or per encoder GFLOP), >= 0.
        cost: ``"layers"`` (cost_k = k) or ``"gflops"`` (the image's ``encoder_gflops`` at k).
        temperature: if given, also the soft targets ``softmax(utility / temperature)`` as
            columns ``p_<k>`` (one per exit).
        quality: the quality maximised (default ``pq``; NaN counts as 1, see ``tradeoff.NAN_QUALITY``).
        exits: restrict the choice to these exits.
    Returns:
        DataFrame indexed by ``image_id``: ``label`` (the chosen exit), ``utility`` (its value),
        ``quality`` and ``cost`` at that exit, and ``p_<k>`` with a temperature.
    """
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0 (or None for hard labels only)")
    table, costs, best = _chosen(table, beta, cost, quality, exits)
    labels = pd.DataFrame(
        {"label": table.exits[best.index].astype(np.int16), "utility": best.utility, "quality": best.quality,
         "cost": best.cost},
        index=pd.Index(table.image_ids, name="image_id"),
    )
    if temperature is not None:
        soft = tradeoff.soft_targets(tradeoff.utilities(table.quality(quality), costs, beta), temperature)
        for column, k in enumerate(table.exits):
            labels[f"p_{int(k)}"] = soft[:, column]
    return labels


def label_histogram(labels, exits: Sequence[int] | None = None) -> pd.Series:
    """Images per chosen exit (``exits``: include exits nobody chose, with 0)."""
    values = labels["label"] if isinstance(labels, pd.DataFrame) else pd.Series(labels)
    counts = values.value_counts().sort_index()
    if exits is not None:
        counts = counts.reindex(sorted(set(exits) | set(counts.index)), fill_value=0)
    counts.index.name = "exit"
    return counts.rename("images")


def labels_summary(table, betas: Sequence[float], cost: str = "layers", exits: Sequence[int] | None = None,
                   quality: str = "pq") -> pd.DataFrame:
    """One row per beta: the share of images at each exit, mean depth, mean quality, mean GFLOPs."""
    table = as_depth_table(table)
    summary = []
    for beta in betas:
        chosen, _, best = _chosen(table, beta, cost, quality, exits)
        depth = chosen.exits[best.index]
        histogram = label_histogram(depth, chosen.exits.tolist()) / len(depth)
        gflops = chosen.cost("gflops")[np.arange(len(depth)), best.index].astype(np.float64)
        summary.append({"beta": beta, **{f"exit_{int(k)}": float(v) for k, v in histogram.items()},
                        "mean_depth": float(depth.mean()), f"mean_{quality}": best.mean_quality,
                        "mean_gflops": float(gflops.mean())})
    return pd.DataFrame(summary).set_index("beta")


def format_labels_summary(summary: pd.DataFrame) -> str:
    """The summary as a plain-text table (shares in %, means to 3 decimals)."""
    shown = summary.copy()
    for column in shown.columns:
        if column.startswith("exit_"):
            shown[column] = (100 * shown[column]).map(lambda v: f"{v:.1f}%")
    return shown.to_string(float_format=lambda v: f"{v:.3f}")
