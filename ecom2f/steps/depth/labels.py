"""Step 2's labels: the ideal exit of each image for a quality/cost trade-off.

y = argmax_k (q_k - beta * cost_k) over the exits k of the depth table, ties toward fewer
layers (exits are sorted ascending and ``np.argmax`` returns the first maximum). Everything
runs on one dense ``[images, exits]`` pivot, so 118k images x 5 exits take milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["QualityGrid", "quality_grid", "derive_labels", "label_histogram", "labels_summary", "format_labels_summary"]

COSTS = ("layers", "gflops")
# An image whose PQ is undefined at some exit has no ground-truth segment and no prediction
# there (nothing to get wrong): it counts as perfect. Zero would punish exits that correctly
# predict nothing relative to exits that hallucinate segments (PQ 0).
NAN_QUALITY = 1.0


class QualityGrid:
    """The depth table as dense arrays: ``quality``, ``gflops`` ``[images, exits]``, ``image_ids`` ``[images]``,
    ``exits`` ``[exits]`` (ascending)."""

    def __init__(self, image_ids: np.ndarray, exits: np.ndarray, quality: np.ndarray, gflops: np.ndarray) -> None:
        self.image_ids, self.exits, self.quality, self.gflops = image_ids, exits, quality, gflops

    def cost(self, cost: str) -> np.ndarray:
        """``[images, exits]`` cost of each exit: its layer count or its encoder GFLOPs."""
        if cost == "layers":
            return np.broadcast_to(self.exits.astype(np.float64), self.quality.shape)
        if cost == "gflops":
            return self.gflops
        raise ValueError(f"cost={cost!r}: choose one of {COSTS}")


def _rows_of(table) -> pd.DataFrame:
    # load_depth_table returns (rows, features); accept that pair as well as the rows alone.
    if isinstance(table, tuple):
        table = table[0]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected the depth rows as a pandas DataFrame (or load_depth_table's pair), got {type(table)}")
    missing = {"image_id", "exit", "encoder_gflops"} - set(table.columns)
    if missing:
        raise ValueError(f"the depth table lacks columns {sorted(missing)}; is it a step-2 table (load_depth_table)?")
    return table


def quality_grid(table, quality: str = "pq", exits: Sequence[int] | None = None) -> QualityGrid:
    """Pivot the long rows (one per image and exit) into dense ``[images, exits]`` arrays.

    ``exits`` restricts the choice to a subset (e.g. the gate's exits); default: every exit in the
    table. Raises if any (image, exit) is missing or duplicated.
    """
    rows = _rows_of(table)
    if quality not in rows.columns:
        raise ValueError(f"quality={quality!r} is not a column of the depth table ({sorted(rows.columns)})")
    if exits is not None:
        wanted = np.asarray(sorted(exits))
        absent = sorted(set(wanted.tolist()) - set(np.unique(rows["exit"]).tolist()))
        if absent:
            raise ValueError(f"exits {absent} are not in the depth table (it has {sorted(np.unique(rows['exit']))})")
        rows = rows[rows["exit"].isin(wanted)]
    image_ids, image_index = np.unique(rows["image_id"].to_numpy(), return_inverse=True)
    exit_values, exit_index = np.unique(rows["exit"].to_numpy(), return_inverse=True)
    shape = (len(image_ids), len(exit_values))
    flat = image_index * shape[1] + exit_index
    counts = np.bincount(flat, minlength=shape[0] * shape[1])
    if counts.max(initial=0) > 1 or counts.min(initial=1) < 1:
        raise ValueError(
            f"the depth table must hold exactly one row per (image, exit): {int((counts == 0).sum())} missing and "
            f"{int((counts > 1).sum())} duplicated of {shape[0]} images x {shape[1]} exits"
        )
    q = np.empty(shape[0] * shape[1])
    q[flat] = rows[quality].to_numpy(dtype=np.float64)
    g = np.empty_like(q)
    g[flat] = rows["encoder_gflops"].to_numpy(dtype=np.float64)
    q = np.where(np.isnan(q), NAN_QUALITY, q).reshape(shape)
    return QualityGrid(image_ids, exit_values, q, g.reshape(shape))


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
        table: the depth rows (``load_depth_table(uri)[0]`` or the pair itself).
        beta: quality given up per unit of cost (per layer, or per encoder GFLOP), >= 0.
        cost: ``"layers"`` (cost_k = k) or ``"gflops"`` (the row's ``encoder_gflops``).
        temperature: if given, also the soft targets ``softmax(utility / temperature)`` as
            columns ``p_<k>`` (one per exit).
        quality: the column maximised (default ``pq``; NaN counts as 1, see ``NAN_QUALITY``).
        exits: restrict the choice to these exits.
    Returns:
        DataFrame indexed by ``image_id``: ``label`` (the chosen exit), ``utility`` (its value),
        ``quality`` and ``cost`` at that exit, and ``p_<k>`` with a temperature.
    """
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta={beta}: must be a finite number >= 0 (quality given up per unit of cost)")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0 (or None for hard labels only)")
    grid = quality_grid(table, quality, exits)
    costs = grid.cost(cost)
    utility = grid.quality - beta * costs
    best = utility.argmax(axis=1)  # first maximum: ties go to the shallower exit
    rows = np.arange(len(best))
    labels = pd.DataFrame(
        {
            "label": grid.exits[best].astype(np.int16),
            "utility": utility[rows, best],
            "quality": grid.quality[rows, best],
            "cost": costs[rows, best],
        },
        index=pd.Index(grid.image_ids, name="image_id"),
    )
    if temperature is not None:
        scaled = utility / temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        soft = np.exp(scaled)
        soft /= soft.sum(axis=1, keepdims=True)
        for column, k in enumerate(grid.exits):
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
    grid = quality_grid(table, quality, exits)
    summary = []
    for beta in betas:
        labels = derive_labels(table, beta, cost=cost, quality=quality, exits=exits)
        histogram = label_histogram(labels, grid.exits.tolist()) / len(labels)
        chosen = np.searchsorted(grid.exits, labels["label"].to_numpy())
        row = {"beta": beta, **{f"exit_{int(k)}": float(v) for k, v in histogram.items()},
               "mean_depth": float(labels["label"].mean()), f"mean_{quality}": float(labels["quality"].mean()),
               "mean_gflops": float(grid.gflops[np.arange(len(chosen)), chosen].mean())}
        summary.append(row)
    return pd.DataFrame(summary).set_index("beta")


def format_labels_summary(summary: pd.DataFrame) -> str:
    """The summary as a plain-text table (shares in %, means to 3 decimals)."""
    shown = summary.copy()
    for column in shown.columns:
        if column.startswith("exit_"):
            shown[column] = (100 * shown[column]).map(lambda v: f"{v:.1f}%")
    return shown.to_string(float_format=lambda v: f"{v:.3f}")
