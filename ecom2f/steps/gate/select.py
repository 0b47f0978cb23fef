"""Choosing gates for compute budgets from the search's results table.

For a budget B (mean encoder layers per image, or mean encoder GFLOPs), the chosen trial is
the one with the best validation PQ among those whose validation mean cost is at most B;
ties go to the cheaper trial, then to the smaller trial id, so the choice is deterministic.
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["budget_name", "select_for_budgets"]

COST_COLUMNS = {"layers": "val_layers", "gflops": "val_gflops"}
# Costs are means of float32 values; a budget equal to a trial's cost must admit it.
COST_TOLERANCE = 1e-6


def budget_name(budget: float, unit: str) -> str:
    """``layers_3``, ``layers_4.5``, ``gflops_12.25``: a folder name under ``<run>/gates/``."""
    return f"{unit}_{budget:g}"


def select_for_budgets(results: pd.DataFrame, budgets: list[float], unit: str = "layers") -> dict[str, dict]:
    """``{budget_name: {"budget", "unit", "trial": row as dict or None}}``.

    ``results`` has one row per trial with ``trial_id``, ``val_pq`` and ``val_layers`` /
    ``val_gflops``; rows with an ``error`` (non-empty) are ignored. A budget no trial fits gets
    ``"trial": None`` (the caller reports it rather than silently picking an over-budget gate).
    """
    if unit not in COST_COLUMNS:
        raise ValueError(f"budget unit {unit!r}: expected one of {sorted(COST_COLUMNS)}")
    cost = COST_COLUMNS[unit]
    missing = [name for name in ("trial_id", "val_pq", cost) if name not in results.columns]
    if missing:
        raise ValueError(f"the results table lacks columns {missing}; it has {list(results.columns)}")
    usable = results
    if "error" in usable.columns:
        usable = usable[usable["error"].isna() | (usable["error"].astype(str) == "")]
    usable = usable[usable["val_pq"].notna() & usable[cost].notna()]
    ranked = usable.sort_values(["val_pq", cost, "trial_id"], ascending=[False, True, True], kind="stable")
    chosen: dict[str, dict] = {}
    for budget in budgets:
        if not (budget > 0 and math.isfinite(budget)):
            raise ValueError(f"compute budget {budget} must be a positive number")
        fitting = ranked[ranked[cost] <= budget + COST_TOLERANCE]
        row = fitting.iloc[0].to_dict() if len(fitting) else None
        chosen[budget_name(budget, unit)] = {"budget": float(budget), "unit": unit, "trial": row}
    return chosen
