"""The run's report: ``RunLayout.report_markdown`` with PNG figures beside it.

Inputs: the evaluation (``RunLayout.eval_summary``, ``eval_per_image``) and step 2's depth table
(``RunLayout.depth``, read with ``ecom2f.steps.depth.table.read_depth_table``). Outputs, all
named by the layout (``RunLayout.report_figure(name)``):

- ``pareto``: PQ vs mean encoder GFLOPs (fixed depths, oracle curve, chosen gates)
- ``depth_histogram``: ideal exit per image for each beta of ``gate.betas``
- ``difficulty`` (synthetic data): chosen depth vs the generator's difficulty score
- the markdown (written after the figures) and ``RunLayout.report_success`` last.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath

import numpy as np
import pandas as pd

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.report.plots import depth_histogram_figure, difficulty_figure, pareto_figure
from ecom2f.steps.depth.labels import derive_labels
from ecom2f.steps.depth.table import DepthTable, read_depth_table
from ecom2f.storage.layout import RunLayout

log = logging.getLogger(__name__)

__all__ = [
    "gates_vs_fixed",
    "oracle_beats_fixed",
    "oracle_vs_fixed",
    "report_complete",
    "summary_markdown",
    "write_report",
]


def report_complete(config: Config) -> bool:
    return storage.exists(config.storage.layout().report_success)


def _best_at_cost(x: np.ndarray, y: np.ndarray, cost: float) -> float:
    """The best PQ a curve of points ``(x [n] mean layers ascending, y [n] PQ)`` realises at ``cost``:
    a point at that cost or cheaper, or the straight line between two neighbours; NaN if none."""
    candidates = list(y[x <= cost + 1e-9])
    if len(x) and x[0] - 1e-9 <= cost <= x[-1] + 1e-9:
        candidates.append(float(np.interp(cost, x, y)))
    return max(candidates) if candidates else np.nan


def oracle_vs_fixed(summary: pd.DataFrame) -> pd.DataFrame:
    """For each fixed depth: the oracle's best PQ at the same mean layer count or fewer, and the
    margin ``oracle - fixed``.

    The oracle's points (its beta sweep) are joined by straight lines (mixing two betas' choices
    image by image realises any cost between them); an oracle point cheaper than the fixed depth
    and better also beats it at equal cost (spend the rest on nothing). The shallowest fixed depth
    ties the oracle by construction: at that mean cost every image must take that depth.
    """
    fixed = summary[summary["kind"] == "fixed"].sort_values("mean_layers")
    curve = summary[summary["kind"].isin(["oracle", "oracle_curve"])]
    curve = curve.groupby("mean_layers", as_index=False)["pq"].max().sort_values("mean_layers")
    x, y = curve["mean_layers"].to_numpy(), curve["pq"].to_numpy()
    rows = []
    for _, row in fixed.iterrows():
        cost = row["mean_layers"]
        oracle = _best_at_cost(x, y, cost)
        rows.append({"variant": row["variant"], "mean_layers": cost, "fixed_pq": row["pq"],
                     "oracle_pq_at_equal_layers": oracle, "margin": oracle - row["pq"]})
    return pd.DataFrame(rows)


def gates_vs_fixed(summary: pd.DataFrame) -> pd.DataFrame:
    """For each gate: the fixed-depth curve's PQ at the gate's mean layers, and ``gate - curve``.

    The curve is what fixed depths alone realise at that mean cost: the best fixed depth at that
    many layers or fewer, or the straight line between two adjacent fixed depths (sending each
    image to one or the other realises any cost between them). A positive margin is what the
    gate's per-image choice adds over choosing by cost alone.
    """
    fixed = summary[summary["kind"] == "fixed"].sort_values("mean_layers")
    x, y = fixed["mean_layers"].to_numpy(float), fixed["pq"].to_numpy(float)
    rows = []
    for _, row in summary[summary["kind"] == "gate"].iterrows():
        cost = row["mean_layers"]
        curve = _best_at_cost(x, y, cost)
        rows.append({"variant": row["variant"], "mean_layers": cost, "gate_pq": row["pq"],
                     "fixed_curve_pq_at_equal_layers": curve, "margin": row["pq"] - curve})
    return pd.DataFrame(rows)


def oracle_beats_fixed(comparison: pd.DataFrame) -> bool:
    """True when the oracle is strictly better than every fixed depth but the shallowest (a tie
    by construction, see :func:`oracle_vs_fixed`) at equal mean layers."""
    if comparison.empty or comparison["margin"].isna().any():
        return False
    ordered = comparison.sort_values("mean_layers")
    return bool((ordered["margin"].iloc[1:] > 0).all() and ordered["margin"].iloc[0] >= -1e-12)


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{scale * value:.{digits}f}"


def summary_markdown(summary: pd.DataFrame, include_curve: bool = False) -> str:
    """The main table: one line per fixed depth, the oracle and each gate (PQ in %)."""
    shown = summary if include_curve else summary[summary["kind"] != "oracle_curve"]
    extra = [c for c in ("mean_image_pq", "miou", "mask_ap") if c in shown.columns]
    names = {"mean_image_pq": "mean image PQ", "miou": "mIoU", "mask_ap": "mask AP"}
    head = ["variant", "kind", "PQ", "PQ_th", "PQ_st", *[names[c] for c in extra],
            "mean layers", "enc. GFLOPs", "total GFLOPs", "ms/image", "table est. PQ", "PQ - est."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in shown.iterrows():
        cells = [r["variant"], r["kind"], _fmt(r["pq"], 100), _fmt(r["pq_things"], 100), _fmt(r["pq_stuff"], 100),
                 *[_fmt(r[c], 100) for c in extra], _fmt(r["mean_layers"]), _fmt(r["mean_encoder_gflops"], 1, 4),
                 _fmt(r["mean_total_gflops"], 1, 3), _fmt(r["seconds_per_image"], 1000, 1),
                 _fmt(r.get("estimate_pq"), 100), _fmt(r.get("pq_minus_estimate"), 100)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _save_png(fig, uri: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    storage.write_bytes(uri, buffer.getvalue())


def _figure(layout: RunLayout, name: str, fig, caption: str) -> str:
    """Save figure ``name`` where the layout puts it; its markdown link, relative to the report."""
    uri = layout.report_figure(name)
    _save_png(fig, uri)
    return f"![{caption}]({posixpath.relpath(uri, posixpath.dirname(layout.report_markdown))})"


def _load_depth_table(config: Config) -> DepthTable | None:
    layout = config.storage.layout()
    if not storage.exists(layout.depth_success):
        log.warning("no complete depth table at %s: the report leaves out the depth-table plots", layout.depth)
        return None
    return read_depth_table(layout.depth, features=False)


def _table_text(frame: pd.DataFrame) -> str:
    if _has_tabulate():
        return frame.to_markdown(index=False, floatfmt=".4f")
    return "```\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n```"


def _comparison_sections(summary: pd.DataFrame) -> list[str]:
    sections = []
    comparison = oracle_vs_fixed(summary)
    if not comparison.empty:
        beats = oracle_beats_fixed(comparison)
        sections += [(f"Oracle vs fixed depth at equal mean layers (oracle beats every deeper fixed depth: "
                      f"**{'yes' if beats else 'no'}**):"), "", _table_text(comparison), ""]
    gates = gates_vs_fixed(summary)
    if not gates.empty:
        sections += [("Gates vs the fixed-depth curve at equal mean layers (margin > 0: the gate's per-image "
                      "choice beats choosing the depth by cost alone):"), "", _table_text(gates), ""]
    return sections


def _depth_sections(config: Config, depth: DepthTable, per_image: pd.DataFrame) -> list[str]:
    """The ideal depths per beta (histogram) and, on synthetic data, depth vs difficulty."""
    layout = config.storage.layout()
    exits = list(config.model.gate.exits)
    labels = {beta: derive_labels(depth, beta, cost="layers", exits=exits) for beta in config.gate.betas}
    means = ", ".join(f"beta {b:g}: {lab['label'].mean():.2f}" for b, lab in sorted(labels.items()))
    sections = ["## Ideal depths (depth table)", "", f"Mean ideal depth per beta: {means}.", "",
                _figure(layout, "depth_histogram", depth_histogram_figure(labels, exits), "histogram of ideal depths"),
                ""]
    if np.isfinite(depth.difficulty).any():
        difficulty = pd.Series(depth.difficulty, index=pd.Index(depth.image_ids, name="image_id"))
        gates = {name: frame for name, frame in per_image[per_image["kind"] == "gate"].groupby("variant")}
        sections += ["## Depth vs difficulty (synthetic data)", "",
                     _figure(layout, "difficulty", difficulty_figure(labels, difficulty, gates), "depth vs difficulty"),
                     ""]
    return sections


def write_report(config: Config, summary: pd.DataFrame | None = None, per_image: pd.DataFrame | None = None,
                 depth_table: DepthTable | None = None) -> str:
    """Writes the report where the run's layout puts it and returns the markdown's URI.

    Inputs not given are read from the run (the evaluation must be complete; the depth table
    is optional: without a complete one the histogram and difficulty plots are left out).
    """
    from ecom2f.steps.evaluate.job import load_per_image, load_summary

    layout = config.storage.layout()
    summary = load_summary(config) if summary is None else summary
    per_image = load_per_image(config) if per_image is None else per_image
    depth_table = _load_depth_table(config) if depth_table is None else depth_table
    sections = [f"# ECO-M2F report: run `{config.storage.run}`", "",
                (f"Validation split `{_dataset_name(config.data.val)}`, {int(summary['images'].max())} images. "
                 "PQ is COCO's dataset PQ; `table est. PQ` is step 3's estimate of the gate from the depth "
                 "table alone: the mean per-image PQ at the exits it picks, on step 3's held-out training "
                 "images, so compare it with `mean image PQ` (same statistic, validation images); "
                 "`PQ - est.` is dataset PQ minus the estimate."), "",
                summary_markdown(summary), "",
                "## Quality vs cost", "", _figure(layout, "pareto", pareto_figure(summary), "PQ vs encoder GFLOPs"), "",
                *_comparison_sections(summary)]
    if depth_table is not None and len(depth_table):
        sections += _depth_sections(config, depth_table, per_image)
    storage.write_text(layout.report_markdown, "\n".join(sections))
    storage.write_text(layout.report_success, json.dumps({"report": layout.report_markdown}))
    log.info("report: %s", layout.report_markdown)
    return layout.report_markdown


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401  (pandas.to_markdown needs it)
    except ImportError:
        return False
    return True


def _dataset_name(ref) -> str:
    """A registered name as is; an explicit spec as its format and image folder."""
    spec = dataset_spec(ref)
    return spec if isinstance(spec, str) else f"{spec['format']} at {spec['image_root']}"
