"""The report's figures (matplotlib, Agg backend): built as Figure objects so tests can read
their lines, bars and labels, saved as PNG by :mod:`ecom2f.report.write`. PQ is in % everywhere."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ecom2f.report.curves import quality_at_cost

__all__ = [
    "CURVE_LABEL", "FIXED_LABEL", "ORACLE_LABEL", "beta_sweep_figure", "depth_histogram_figure", "difficulty_figure",
    "pareto_figure", "scenes_figure",
]

FIXED_LABEL = "fixed depth"
CURVE_LABEL = "fixed-depth curve (best mix of fixed depths at each cost)"
ORACLE_LABEL = "oracle (per-image best exit, beta sweep)"
_GATE_STYLES = tuple(zip("D^v<>ph*", ("tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "black")))


def _oracle_curve(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["kind"].isin(["oracle", "oracle_curve"])].sort_values("mean_encoder_gflops")


def pareto_figure(summary: pd.DataFrame, gates: pd.DataFrame | None = None) -> Figure:
    """PQ (%) vs mean encoder GFLOPs: the fixed-depth curve, the oracle curve and one marker per gate.

    ``summary``: the evaluation's summary (``kind``, ``variant``, ``pq`` fraction, ``mean_encoder_gflops``,
    ``mean_layers``). ``gates`` (optional, :func:`ecom2f.report.comparisons.versus_fixed`, indexed by
    ``variant``): each gate's 95% interval of its margin over the fixed-depth curve, drawn as an error
    bar around the gate (a bar clear of the curve is a margin the bootstrap is sure of).
    """
    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    ax = fig.add_subplot()
    fixed = summary[summary["kind"] == "fixed"].sort_values("mean_encoder_gflops")
    ax.plot(fixed["mean_encoder_gflops"], 100 * fixed["pq"], "o-", color="tab:blue", label=FIXED_LABEL)
    for _, row in fixed.iterrows():
        ax.annotate(f"{row['mean_layers']:.0f}L", (row["mean_encoder_gflops"], 100 * row["pq"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8, color="tab:blue")
    x, y = fixed["mean_encoder_gflops"].to_numpy(float), 100 * fixed["pq"].to_numpy(float)
    if len(x) > 1:  # what the gates are compared with: a worse deeper depth is beaten by a cheaper better one
        grid = np.linspace(x[0], x[-1], 200)
        ax.plot(grid, [quality_at_cost(x, y, c) for c in grid], ":", color="tab:blue", linewidth=1.2,
                label=CURVE_LABEL)
    oracle = _oracle_curve(summary)
    if not oracle.empty:
        ax.plot(oracle["mean_encoder_gflops"], 100 * oracle["pq"], "s--", color="tab:green", markersize=4,
                label=ORACLE_LABEL)
    for (_, row), (marker, color) in zip(summary[summary["kind"] == "gate"].iterrows(), _GATE_STYLES * 8):
        x, y = row["mean_encoder_gflops"], 100 * row["pq"]
        label = f"gate {row['variant']} ({row['mean_layers']:.2f} layers)"
        if gates is not None and row["variant"] in gates.index:
            ci = gates.loc[row["variant"]]
            low, high = ci["curve_pq"] + ci["vs_curve_low"], ci["curve_pq"] + ci["vs_curve_high"]
            ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt="none", ecolor=color, capsize=4, elinewidth=1.2)
        ax.plot([x], [y], marker, color=color, markersize=9, linestyle="none", label=label)
    ax.set_xlabel("mean encoder GFLOPs per image")
    ax.set_ylabel("PQ (validation, %)")
    ax.set_title("Quality vs encoder cost (bars: 95% CI of a gate's margin over the fixed-depth curve)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _bars(ax, shares: dict[str, pd.Series], depths: list[int], title: str) -> None:
    """One bar group per depth, one colour per series (``name -> share in % per depth``)."""
    width = 0.8 / max(1, len(shares))
    for i, (name, share) in enumerate(shares.items()):
        ax.bar(np.arange(len(depths)) + (i - (len(shares) - 1) / 2) * width,
               share.reindex(depths, fill_value=0.0).to_numpy(), width, label=name)
    ax.set_xticks(np.arange(len(depths)), [str(k) for k in depths])
    ax.set_xlabel("encoder layers")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


def depth_histogram_figure(labels_by_beta: dict[float, pd.DataFrame], depths: Sequence[int],
                           gate_depths: dict[str, pd.Series] | None = None) -> Figure:
    """Share of images (%) per depth, over every depth the report's tables show (``depths``).

    Left: the ideal exit of each *training* image of the depth table, one colour per beta
    (``labels_by_beta``: beta -> ``derive_labels``). Right (when ``gate_depths``: name -> each
    *validation* image's depth): the depth each gate chose on the validation images.
    """
    depths = sorted(int(k) for k in depths)
    panels = 2 if gate_depths else 1
    fig = Figure(figsize=(6.5 * panels, 4.2), dpi=110)
    ideal = {f"beta={beta:g} (mean {lab['label'].mean():.2f} layers)": 100 * lab["label"].value_counts(normalize=True)
             for beta, lab in sorted(labels_by_beta.items())}
    ax = fig.add_subplot(1, panels, 1)
    _bars(ax, ideal, depths, "Training images (depth table): ideal exit per beta")
    ax.set_ylabel("images (%)")
    if gate_depths:
        chosen = {f"{name} (mean {d.mean():.2f} layers)": 100 * d.value_counts(normalize=True)
                  for name, d in gate_depths.items()}
        _bars(fig.add_subplot(1, panels, 2), chosen, depths, "Validation images: depth each gate chose")
    fig.tight_layout()
    return fig


def difficulty_figure(labels_by_beta: dict[float, pd.DataFrame], difficulty: pd.Series,
                      gate_depths: dict[str, pd.DataFrame] | None = None, bins: int = 5) -> Figure:
    """Chosen depth vs the synthetic generator's difficulty score, training and validation images apart.

    Left (training images, depth table): mean ideal exit per difficulty quantile bin for each beta
    (``difficulty``: image_id -> score). Right (validation images): each gate's real depth per image
    (``gate_depths``: name -> frame with ``difficulty``, ``depth`` and optionally ``scene``), jittered
    vertically so overlapping images stay visible; simple scenes as circles, cluttered as crosses.
    """
    fig = Figure(figsize=(12, 4.2), dpi=110)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, sharey=None)
    for beta, labels in sorted(labels_by_beta.items()):
        joined = labels[["label"]].join(difficulty.rename("difficulty"), how="inner").dropna()
        if joined.empty:
            continue
        quantile = pd.qcut(joined["difficulty"], q=min(bins, joined["difficulty"].nunique()), duplicates="drop")
        means = joined.groupby(quantile, observed=True).agg(difficulty=("difficulty", "mean"), label=("label", "mean"))
        left.plot(means["difficulty"], means["label"], "o-", label=f"ideal exit, beta={beta:g}")
    left.set_title("Training images (depth table): mean ideal exit", fontsize=9)
    rng = np.random.default_rng(0)
    for (name, frame), (_, color) in zip((gate_depths or {}).items(), _GATE_STYLES * 8):
        frame = frame.dropna(subset=["difficulty"])
        scene = frame["scene"] if "scene" in frame else pd.Series("", index=frame.index)
        for kind, marker in (("cluttered", "x"), ("simple", "o"), ("", "x")):
            part = frame[scene == kind]
            if len(part):
                right.plot(part["difficulty"], part["depth"] + rng.uniform(-0.15, 0.15, len(part)), marker,
                           color=color, alpha=0.6, linestyle="none", fillstyle="none",
                           label=f"gate {name}" + (f", {kind} scenes" if kind else ""))
    right.set_title("Validation images: depth each gate chose", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("generator difficulty score")
        ax.set_ylabel("encoder layers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def scenes_figure(table: pd.DataFrame, depths: Sequence[int]) -> Figure:
    """Fixed-depth PQ (%) per scene kind: one line per column of ``table`` (rows ``depth_<k>``)."""
    fig = Figure(figsize=(6.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    depths = list(depths)
    for column in table.columns:
        ax.plot(depths, table.loc[[f"depth_{k}" for k in depths], column].to_numpy(), "o-", label=str(column))
    ax.set_xlabel("fixed depth (encoder layers)")
    ax.set_ylabel("PQ (validation, %)")
    ax.set_title("Fixed depths on simple and cluttered scenes", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def beta_sweep_figure(sweep: pd.DataFrame, marked: Sequence[float] = ()) -> Figure:
    """Table-estimated PQ (%) vs mean layers of the ideal exits, one point per beta (``sweep``:
    :func:`ecom2f.report.sweep.beta_sweep`); the ``marked`` betas (the gates') are annotated."""
    fig = Figure(figsize=(6.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    ax.plot(sweep["mean_layers"], sweep["table_pq"], ".-", color="tab:gray", label="ideal exits, one point per beta")
    for _, row in sweep[sweep["beta"].isin([float(b) for b in marked])].iterrows():
        ax.plot([row["mean_layers"]], [row["table_pq"]], "o", color="tab:red")
        ax.annotate(f"beta={row['beta']:g}", (row["mean_layers"], row["table_pq"]), textcoords="offset points",
                    xytext=(5, -10), fontsize=8)
    ax.set_xlabel("mean layers (depth table's images)")
    ax.set_ylabel("mean per-image PQ at the ideal exits (%)")
    ax.set_title("beta without retraining: the trade-off each beta asks for", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
