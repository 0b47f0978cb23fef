"""The report's figures (matplotlib, Agg backend): built as Figure objects so tests can read
their lines and labels, saved as PNG by :mod:`ecom2f.report`."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["FIXED_LABEL", "ORACLE_LABEL", "depth_histogram_figure", "difficulty_figure", "pareto_figure"]

FIXED_LABEL = "fixed depth"
ORACLE_LABEL = "oracle (per-image best exit, beta sweep)"


def _oracle_curve(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["kind"].isin(["oracle", "oracle_curve"])].sort_values("mean_encoder_gflops")


def pareto_figure(summary: pd.DataFrame) -> Figure:
    """PQ vs mean encoder GFLOPs: the fixed-depth curve, the oracle curve and one marker per gate.

    ``summary``: ``ecom2f.steps.evaluate.summary.summarize``'s table (``kind``, ``variant``, ``pq``,
    ``mean_encoder_gflops``, ``mean_layers``).
    """
    fig = Figure(figsize=(7, 4.8), dpi=110)
    ax = fig.add_subplot()
    fixed = summary[summary["kind"] == "fixed"].sort_values("mean_encoder_gflops")
    ax.plot(fixed["mean_encoder_gflops"], 100 * fixed["pq"], "o-", color="tab:blue", label=FIXED_LABEL)
    for _, row in fixed.iterrows():
        ax.annotate(f"{row['mean_layers']:.0f}L", (row["mean_encoder_gflops"], 100 * row["pq"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8, color="tab:blue")
    oracle = _oracle_curve(summary)
    if not oracle.empty:
        ax.plot(oracle["mean_encoder_gflops"], 100 * oracle["pq"], "s--", color="tab:green", markersize=4,
                label=ORACLE_LABEL)
    styles = iter(zip("D^v<>ph*", ("tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "black")))
    for _, row in summary[summary["kind"] == "gate"].iterrows():
        marker, color = next(styles, ("D", "tab:red"))
        ax.plot([row["mean_encoder_gflops"]], [100 * row["pq"]], marker, color=color, markersize=9,
                linestyle="none", label=f"gate {row['variant']} ({row['mean_layers']:.2f} layers)")
    ax.set_xlabel("mean encoder GFLOPs per image")
    ax.set_ylabel("PQ (validation, %)")
    ax.set_title("Quality vs encoder cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def depth_histogram_figure(labels_by_beta: dict[float, pd.DataFrame], exits: Sequence[int]) -> Figure:
    """Share of images per ideal exit, one bar group per exit and one colour per beta.

    ``labels_by_beta``: beta -> ``derive_labels`` output (a ``label`` column of chosen exits).
    """
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    exits = list(exits)
    width = 0.8 / max(1, len(labels_by_beta))
    for i, (beta, labels) in enumerate(sorted(labels_by_beta.items())):
        share = labels["label"].value_counts(normalize=True).reindex(exits, fill_value=0.0)
        ax.bar(np.arange(len(exits)) + (i - (len(labels_by_beta) - 1) / 2) * width, 100 * share.to_numpy(), width,
               label=f"beta={beta:g} (mean {labels['label'].mean():.2f} layers)")
    ax.set_xticks(np.arange(len(exits)), [str(k) for k in exits])
    ax.set_xlabel("ideal exit (encoder layers)")
    ax.set_ylabel("images (%)")
    ax.set_title("Ideal depth per image on the depth table, per beta")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def difficulty_figure(labels_by_beta: dict[float, pd.DataFrame], difficulty: pd.Series,
                      gate_depths: dict[str, pd.DataFrame] | None = None, bins: int = 5) -> Figure:
    """Chosen depth vs the synthetic generator's difficulty score.

    Lines: mean ideal exit per difficulty quantile bin for each beta (depth table). Points: each
    gate's real per-image depth on the validation images (``gate_depths``: name -> frame with
    ``difficulty`` and ``depth``), jittered vertically so overlapping images stay visible.
    """
    fig = Figure(figsize=(9.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    for beta, labels in sorted(labels_by_beta.items()):
        joined = labels[["label"]].join(difficulty.rename("difficulty"), how="inner").dropna()
        if joined.empty:
            continue
        quantile = pd.qcut(joined["difficulty"], q=min(bins, joined["difficulty"].nunique()), duplicates="drop")
        means = joined.groupby(quantile, observed=True).agg(difficulty=("difficulty", "mean"), label=("label", "mean"))
        ax.plot(means["difficulty"], means["label"], "o-", label=f"ideal exit, beta={beta:g}")
    rng = np.random.default_rng(0)
    for name, frame in (gate_depths or {}).items():
        frame = frame.dropna(subset=["difficulty"])
        ax.plot(frame["difficulty"], frame["depth"] + rng.uniform(-0.12, 0.12, len(frame)), "x", alpha=0.7,
                linestyle="none", label=f"gate {name} (validation images)")
    ax.set_xlabel("generator difficulty score")
    ax.set_ylabel("encoder layers")
    ax.set_title("Chosen depth vs image difficulty (synthetic data)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: points stay visible
    fig.tight_layout()
    return fig
