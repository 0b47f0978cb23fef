"""The report's words and tables: numbers formatted one way (PQ, mIoU and AP in % with one
decimal, differences in PQ points with their 95% interval), and sentences built from them, so
that what the report says is always what the numbers say."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["ci_text", "gate_sentence", "gflops", "markdown_table", "pct", "points", "saving_text", "verdict"]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def pct(fraction, digits: int = 1) -> str:
    """A fraction (PQ, mIoU, AP) in %: ``0.4567`` -> ``45.7``; ``-`` when missing."""
    return "-" if _missing(fraction) else f"{100 * float(fraction):.{digits}f}"


def points(value, digits: int = 1) -> str:
    """A difference already in PQ points, signed: ``+1.2`` / ``-0.4``; one that rounds to zero reads
    ``+0.0`` whatever its sign (float noise on an exact tie must not read as a loss)."""
    if _missing(value):
        return "-"
    value = float(value)
    return f"{0.0 if abs(value) < 0.5 * 10 ** -digits else value:+.{digits}f}"


def gflops(value) -> str:
    """GFLOPs with three significant decimals below 10 (the demo's ~2), two above (COCO's ~200)."""
    if _missing(value):
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def ci_text(estimate, low, high) -> str:
    """``+1.2 (-0.3..+2.6)``."""
    return f"{points(estimate)} ({points(low)}..{points(high)})"


def verdict(row: pd.Series) -> str:
    """Where a gate stands against the fixed-depth curve at its mean cost (``row``: a row of
    :func:`ecom2f.report.comparisons.versus_fixed`): above / below by X PQ with the 95% interval, or
    not distinguishable when the interval holds zero."""
    interval = f"95% CI {points(row['vs_curve_low'])}..{points(row['vs_curve_high'])}"
    if row["vs_curve_low"] > 0:
        return f"above the fixed-depth curve by {abs(row['vs_curve']):.1f} PQ ({interval})"
    if row["vs_curve_high"] < 0:
        return f"below the fixed-depth curve by {abs(row['vs_curve']):.1f} PQ ({interval})"
    return f"not distinguishable from the fixed-depth curve ({points(row['vs_curve'])} PQ, {interval})"


def gate_sentence(name: str, row: pd.Series) -> str:
    """One plain sentence on a gate against the fixed-depth curve at its mean cost."""
    return f"Gate `{name}` is {verdict(row)} at {gflops(row['mean_encoder_gflops'])} encoder GFLOPs per image."


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain GitHub table of already formatted cells (no dependency on tabulate)."""
    head = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join("-" if _missing(v) else str(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def saving_text(row: pd.Series) -> str:
    """Encoder GFLOPs a gate saves at matched PQ, with its share of the full depth's encoder GFLOPs."""
    if not np.isfinite(row["matched_gflops"]):
        return "no fixed depth reaches its PQ"
    return f"{gflops(row['saved_gflops'])} ({100 * row['saved_share']:+.0f}%)"
