"""The run's report: ``RunLayout.report_markdown`` with PNG figures beside it.

Inputs: the evaluation (``RunLayout.eval_summary``, ``eval_per_image``), each chosen gate's
``gate.json``, step 2's depth table (``RunLayout.depth``, optional) and, on synthetic data, the
validation split's scene kinds. What is computed: :mod:`ecom2f.report.evidence`; what is said:
:mod:`ecom2f.report.sections`. Figures, all named by the layout (``RunLayout.report_figure(name)``):

- ``pareto``: PQ vs mean encoder GFLOPs (fixed depths, oracle curve, gates with their 95% intervals)
- ``depth_histogram``: depth per image for each beta (training images) and each gate (validation images)
- ``scenes``: fixed-depth PQ on simple and cluttered scenes (synthetic data with scene kinds)
- ``difficulty``: chosen depth vs the generator's difficulty score, training and validation apart
- ``beta_sweep``: mean layers and table PQ of the ideal exits for 20+ betas
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
from ecom2f.errors import MissingStepError
from ecom2f.report import plots, sections
from ecom2f.report.bootstrap import dataset_pq
from ecom2f.report.evidence import Evidence, gather
from ecom2f.report.scenes import scene_table
from ecom2f.steps.depth.table import DepthTable, read_finished_depth_table
from ecom2f.storage.layout import RunLayout

log = logging.getLogger(__name__)

__all__ = ["FIGURES", "report_complete", "write_report"]

# TODO(layout): the figure names; RunLayout.report_figure(name) makes each <run>/report/<name>.png.
FIGURES = ("pareto", "depth_histogram", "scenes", "difficulty", "beta_sweep")


def report_complete(config: Config) -> bool:
    return storage.exists(config.storage.layout().report_success)


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
    try:
        return read_finished_depth_table(layout, features=False)
    except MissingStepError:
        log.warning("no finished depth table at %s: the report leaves out its depth-table parts", layout.depth)
        return None


def _pq_of_rows(rows: pd.DataFrame) -> float:
    """Dataset PQ (%) of per-image rows (their ``pq_stat`` sums merged)."""
    from ecom2f.steps.evaluate.stages import merge_pq

    stat = merge_pq(rows["pq_stat"]).to_dict()
    sums = np.array([[s["iou"], s["tp"], s["fp"], s["fn"]] for s in stat.values()]).reshape(-1, 4)
    return float(100 * dataset_pq(sums))


def _scene_parts(layout: RunLayout, evidence: Evidence) -> list[str]:
    if evidence.scenes is None:
        return []
    table = scene_table(evidence.per_image, evidence.scenes["scene"],
                        evidence.fixed + evidence.gates + (["oracle"] if "oracle" in evidence.versus.index else []),
                        _pq_of_rows)
    depths = [int(name.split("_")[1]) for name in evidence.fixed]
    return ["## Simple vs cluttered scenes", "", sections.scenes_section(evidence, table), "",
            _figure(layout, "scenes", plots.scenes_figure(table.loc[evidence.fixed], depths), "PQ per scene kind"), ""]


def _depth_parts(config: Config, layout: RunLayout, evidence: Evidence) -> list[str]:
    gate_depths = {name: evidence.per_image.loc[evidence.per_image["variant"] == name, "depth"]
                   for name in evidence.gates}
    parts = ["## Chosen depths", "", sections.depth_section(evidence), ""]
    if evidence.labels is not None:
        parts += [_figure(layout, "depth_histogram",
                          plots.depth_histogram_figure(evidence.labels, evidence.depths, gate_depths),
                          "histogram of depths"), ""]
    difficulty = evidence.per_image.dropna(subset=["difficulty"]) if "difficulty" in evidence.per_image else None
    if evidence.train_difficulty is not None and difficulty is not None and len(difficulty):
        scenes = evidence.scenes["scene"] if evidence.scenes is not None else None
        frames = {name: frame.assign(scene=frame["image_id"].astype(str).map(scenes) if scenes is not None else "")
                  for name, frame in difficulty[difficulty["kind"] == "gate"].groupby("variant")}
        parts += [_figure(layout, "difficulty", plots.difficulty_figure(evidence.labels, evidence.train_difficulty, frames),
                          "depth vs difficulty"), ""]
    if evidence.sweep is not None:
        parts += ["## beta without retraining", "", sections.sweep_section(evidence, config.gate.budget_unit), "",
                  _figure(layout, "beta_sweep", plots.beta_sweep_figure(evidence.sweep, config.gate.betas),
                          "beta sweep"), ""]
    return parts


def write_report(config: Config, summary: pd.DataFrame | None = None, per_image: pd.DataFrame | None = None,
                 depth_table: DepthTable | None = None) -> str:
    """Writes the report where the run's layout puts it and returns the markdown's URI.

    Inputs not given are read from the run (the evaluation must be complete; without a finished
    depth table the depth-table parts are left out).
    """
    from ecom2f.steps.evaluate.job import load_per_image, load_summary

    layout = config.storage.layout()
    summary = load_summary(config) if summary is None else summary
    per_image = load_per_image(config) if per_image is None else per_image
    depth_table = _load_depth_table(config) if depth_table is None else depth_table
    evidence = gather(config, summary, per_image, depth_table)
    name = dataset_spec(config.data.val)
    sections_ = [
        f"# ECO-M2F report: run `{config.storage.run}`", "", "## In short", "", sections.overview(config, evidence), "",
        sections.checks(evidence), "", "## Headline", "",
        (f"Validation split `{name if isinstance(name, str) else name['image_root']}`, "
         f"{int(evidence.summary['images'].max())} images."), "", sections.headline(evidence), "",
        "## Quality vs cost", "", _figure(layout, "pareto", plots.pareto_figure(evidence.summary, evidence.versus),
                                          "PQ vs encoder GFLOPs"), "", sections.oracle_table(evidence), "",
        *_scene_parts(layout, evidence), *_depth_parts(config, layout, evidence),
        "## Step 3's estimates", "", sections.estimates_section(evidence), "",
        "## All variants", "", sections.variants_table(evidence), ""]
    storage.write_text(layout.report_markdown, "\n".join(sections_))
    storage.write_text(layout.report_success, json.dumps({"report": layout.report_markdown}))
    log.info("report: %s", layout.report_markdown)
    return layout.report_markdown
