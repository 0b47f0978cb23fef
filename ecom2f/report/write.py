"""The run's report: ``<run>/report/report.md`` with PNG plots beside it.

Inputs: the evaluation (``<run>/eval/summary.parquet``, ``per_image.parquet``) and step 2's
depth table (``<run>/depth/``, read with ``ecom2f.steps.depth.job.load_depth_table``). Outputs:

- ``pareto.png``: PQ vs mean encoder GFLOPs (fixed depths, oracle curve, chosen gates)
- ``depth_histogram.png``: ideal exit per image for each beta of ``gate.betas``
- ``difficulty.png`` (synthetic data): chosen depth vs the generator's difficulty score
- ``report.md`` (written after the PNGs) and ``_SUCCESS.json`` last.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pandas as pd

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.report.plots import depth_histogram_figure, difficulty_figure, pareto_figure

log = logging.getLogger(__name__)

__all__ = ["write_report", "report_complete", "oracle_vs_fixed", "oracle_beats_fixed", "summary_markdown", "SUCCESS"]

SUCCESS = "_SUCCESS.json"


def report_complete(config: Config) -> bool:
    return storage.exists(storage.join(config.storage.layout().report, SUCCESS))


def _derive_labels():
    try:
        from ecom2f.steps.depth.job import derive_labels
    except ImportError:  # step 2's labels also live in their own module
        from ecom2f.steps.depth.labels import derive_labels
    return derive_labels


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


def _load_depth_rows(config: Config) -> pd.DataFrame | None:
    try:
        from ecom2f.steps.depth.job import load_depth_table
    except ImportError:
        log.warning("ecom2f.steps.depth.job is not installed: the report leaves out the depth-table plots")
        return None
    depth_uri = config.storage.layout().depth
    if not storage.exists(storage.join(depth_uri, "_SUCCESS.json")):
        log.warning("no complete depth table at %s: the report leaves out the depth-table plots", depth_uri)
        return None
    return load_depth_table(depth_uri)[0]


def write_report(config: Config, summary: pd.DataFrame | None = None, per_image: pd.DataFrame | None = None,
                 depth_rows: pd.DataFrame | None = None) -> str:
    """Writes the report under ``<run>/report/`` and returns the URI of ``report.md``.

    Inputs not given are read from the run (the evaluation must be complete; the depth table
    is optional: without it the histogram and difficulty plots are left out).
    """
    from ecom2f.steps.evaluate.job import load_per_image, load_summary

    layout = config.storage.layout()
    summary = load_summary(config) if summary is None else summary
    per_image = load_per_image(config) if per_image is None else per_image
    depth_rows = _load_depth_rows(config) if depth_rows is None else depth_rows
    out = layout.report
    sections = [f"# ECO-M2F report: run `{config.storage.run}`", "",
                f"Validation split `{_dataset_name(config.data.val)}`, {int(summary['images'].max())} images. "
                "PQ is COCO's dataset PQ; `table est. PQ` is step 3's estimate of the gate from the depth "
                "table alone: the mean per-image PQ at the exits it picks, on step 3's held-out training "
                "images, so compare it with `mean image PQ` (same statistic, validation images); "
                "`PQ - est.` is dataset PQ minus the estimate.", "",
                summary_markdown(summary), ""]

    _save_png(pareto_figure(summary), storage.join(out, "pareto.png"))
    sections += ["## Quality vs cost", "", "![PQ vs encoder GFLOPs](pareto.png)", ""]
    comparison = oracle_vs_fixed(summary)
    if not comparison.empty:
        beats = oracle_beats_fixed(comparison)
        sections += [f"Oracle vs fixed depth at equal mean layers (oracle beats every deeper fixed depth: "
                     f"**{'yes' if beats else 'no'}**):", "",
                     comparison.to_markdown(index=False, floatfmt=".4f") if _has_tabulate() else
                     "```\n" + comparison.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n```", ""]

    gates = gates_vs_fixed(summary)
    if not gates.empty:
        sections += ["Gates vs the fixed-depth curve at equal mean layers (margin > 0: the gate's per-image "
                     "choice beats choosing the depth by cost alone):", "",
                     gates.to_markdown(index=False, floatfmt=".4f") if _has_tabulate() else
                     "```\n" + gates.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n```", ""]

    if depth_rows is not None and len(depth_rows):
        derive_labels = _derive_labels()
        exits = list(config.model.gate.exits)
        labels = {beta: derive_labels(depth_rows, beta, cost="layers", exits=exits) for beta in config.gate.betas}
        _save_png(depth_histogram_figure(labels, exits), storage.join(out, "depth_histogram.png"))
        means = ", ".join(f"beta {b:g}: {lab['label'].mean():.2f}" for b, lab in sorted(labels.items()))
        sections += ["## Ideal depths (depth table)", "", f"Mean ideal depth per beta: {means}.", "",
                     "![histogram of ideal depths](depth_histogram.png)", ""]
        if "difficulty" in depth_rows.columns and depth_rows["difficulty"].notna().any():
            difficulty = depth_rows.groupby("image_id")["difficulty"].first()
            gates = {name: frame for name, frame in per_image[per_image["kind"] == "gate"].groupby("variant")}
            _save_png(difficulty_figure(labels, difficulty, gates), storage.join(out, "difficulty.png"))
            sections += ["## Depth vs difficulty (synthetic data)", "", "![depth vs difficulty](difficulty.png)", ""]
    report_uri = storage.join(out, "report.md")
    storage.write_text(report_uri, "\n".join(sections))
    storage.write_text(storage.join(out, SUCCESS), json.dumps({"report": report_uri}))
    log.info("report: %s", report_uri)
    return report_uri


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
