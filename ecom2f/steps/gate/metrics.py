"""What a gate's picks realise on images of the depth table, beside the oracle and every fixed
depth on the same images and trade-off (step 3's table-only scores)."""

from __future__ import annotations

import numpy as np

from ecom2f import tradeoff
from ecom2f.steps.gate.data import GateTable

__all__ = ["realised_metrics", "reference_metrics"]


def realised_metrics(table: GateTable, positions: np.ndarray, picks: np.ndarray, beta: float,
                     cost: str = "layers") -> dict[str, float]:
    """What picking exit index ``picks [n]`` for images ``positions [n]`` gives, from the table:
    mean PQ, mean layers, mean encoder GFLOPs and mean utility ``q - beta * cost``."""
    rows, picks = np.asarray(positions), np.asarray(picks)
    chosen = tradeoff.choose(table.pq[rows], table.cost(cost)[rows], beta, picks)
    return {
        "pq": chosen.mean_quality,
        "layers": float(table.exits[picks].mean()),
        "gflops": float(table.gflops[rows, picks].astype(np.float64).mean()),
        "utility": chosen.mean_utility,
    }


def reference_metrics(table: GateTable, positions: np.ndarray, beta: float, cost: str = "layers") -> dict:
    """``{"oracle": metrics, "fixed_<k>": metrics per exit k}`` on images ``positions [n]``, same beta."""
    rows = np.asarray(positions)
    oracle = tradeoff.ideal_exits(table.pq[rows], table.cost(cost)[rows], beta)
    result = {"oracle": realised_metrics(table, rows, oracle, beta, cost)}
    for index, depth in enumerate(table.exits):
        result[f"fixed_{int(depth)}"] = realised_metrics(table, rows, np.full(len(rows), index), beta, cost)
    return result
