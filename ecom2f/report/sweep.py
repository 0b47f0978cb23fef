"""beta without retraining: what each trade-off would ask of the images, read from the depth table.

For any beta, the ideal exit of every image is ``argmax_k (q_k - beta * cost_k)``
(:func:`ecom2f.steps.depth.labels.derive_labels`); its mean layers and its mean per-image PQ are what
a perfect gate trained for that beta would realise on the table's images. Each beta takes
milliseconds, so users can choose beta from this sweep before training a gate for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ecom2f.steps.depth.labels import derive_labels
from ecom2f.steps.depth.table import DepthTable

__all__ = ["beta_grid", "beta_sweep", "ideal_exits_by_beta"]


def beta_grid(configured: Sequence[float], count: int = 24) -> list[float]:
    """0, the configured betas, and ``count`` betas spaced geometrically from a tenth of the smallest
    positive configured beta to ten times the largest (default 1e-4..1 when none is positive)."""
    positive = [b for b in configured if b > 0]
    low, high = (min(positive) / 10, max(positive) * 10) if positive else (1e-4, 1.0)
    grid = np.geomspace(low, high, count)
    return sorted({0.0, *(float(b) for b in configured), *(float(f"{b:.3g}") for b in grid)})


def ideal_exits_by_beta(depth: DepthTable, betas: Sequence[float], cost: str,
                        exits: Sequence[int]) -> dict[float, pd.DataFrame]:
    """beta -> ``derive_labels`` (the ideal exit ``label`` of each image, indexed by ``image_id``)."""
    return {float(b): derive_labels(depth, b, cost=cost, exits=list(exits)) for b in betas}


def beta_sweep(depth: DepthTable, betas: Sequence[float], cost: str, exits: Sequence[int]) -> pd.DataFrame:
    """One row per beta: ``mean_layers``, ``table_pq`` (% mean per-image PQ at the ideal exits,
    undefined PQ counted as 1 as in step 2 and 3), ``exit_<k>`` (% of images), ``seconds`` (the labels' time)."""
    rows = []
    for beta in betas:
        start = time.perf_counter()
        labels = derive_labels(depth, beta, cost=cost, exits=list(exits))
        seconds = time.perf_counter() - start
        share = labels["label"].value_counts(normalize=True).reindex(list(exits), fill_value=0.0)
        rows.append({"beta": float(beta), "mean_layers": float(labels["label"].mean()),
                     "table_pq": 100 * float(labels["quality"].mean()),
                     **{f"exit_{int(k)}": 100 * float(v) for k, v in share.items()}, "seconds": seconds})
    return pd.DataFrame(rows)
