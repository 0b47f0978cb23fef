"""Everything the report states, computed once from the run's artifacts (no formatting here).

Inputs: the evaluation's summary and per-image rows, each chosen gate's metadata (``gate.json``),
the depth table (optional) and the validation split's per-image scene kinds (synthetic data).
Gates that chose the same depth for every validation image are one model for the report: they are
merged into one variant named after all of them (``layers_4.0 = layers_5.0``).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.report.bootstrap import ImageStats
from ecom2f.report.comparisons import scene_depth_gain, versus_fixed
from ecom2f.report.scenes import image_attributes
from ecom2f.report.sweep import beta_grid, beta_sweep, ideal_exits_by_beta
from ecom2f.steps.depth.table import DepthTable
from ecom2f.steps.evaluate.summary import oracle_rows
from ecom2f.storage.layout import gate_files

log = logging.getLogger(__name__)

__all__ = ["Evidence", "depth_shares", "gather", "mean_depth_by_scene", "merge_identical_gates"]


@dataclasses.dataclass
class Evidence:
    """The numbers of one report. PQ differences are in PQ points; ``summary`` keeps fractions."""

    summary: pd.DataFrame            # one row per variant (gates merged)
    per_image: pd.DataFrame          # fixed, gate and oracle rows per image
    fixed: list[str]                 # fixed-depth variants, shallow to deep
    full: str                        # the deepest fixed depth: the baseline
    gates: list[str]
    merged: dict[str, list[str]]     # gate variant -> the budgets it stands for
    gate_meta: dict[str, dict]       # budget name -> gate.json
    versus: pd.DataFrame             # versus_fixed of the gates and the oracle, indexed by variant
    depths: list[int]                # every depth the tables show
    gate_exits: list[int]            # the depths a gate can choose
    scenes: pd.DataFrame | None = None       # image_id -> scene, difficulty (validation split)
    scene_gain: pd.DataFrame | None = None   # scene_depth_gain
    labels: dict[float, pd.DataFrame] | None = None  # gate.betas -> ideal exits on the depth table
    sweep: pd.DataFrame | None = None
    train_difficulty: pd.Series | None = None  # image_id -> difficulty of the depth table's images
    train_scene_counts: pd.Series | None = None  # scene kind -> images of the training split


def merge_identical_gates(summary: pd.DataFrame, per_image: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                        dict[str, list[str]]]:
    """Gates whose per-image depths are equal on every validation image ran the same network on
    the same images: keep the first, named ``a = b``, and drop the others' rows."""
    gates = per_image[per_image["kind"] == "gate"]
    depths = {name: tuple(g.sort_values("image_id")["depth"].tolist()) for name, g in gates.groupby("variant", sort=True)}
    groups: dict[tuple, list[str]] = {}
    for name, key in depths.items():
        groups.setdefault(key, []).append(name)
    rename, drop, merged = {}, [], {}
    for names in groups.values():
        label = " = ".join(names)
        rename[names[0]] = label
        drop += names[1:]
        merged[label] = names
    keep = lambda frame: frame[~frame["variant"].isin(drop)].replace({"variant": rename})
    return keep(summary), keep(per_image), merged


def _gate_meta(config: Config, names: list[str]) -> dict[str, dict]:
    layout, found = config.storage.layout(), {}
    for name in names:
        uri = gate_files(layout.gate(name))[1]
        if storage.exists(uri):
            found[name] = json.loads(storage.read_text(uri))
    return found


def _with_oracle(per_image: pd.DataFrame) -> pd.DataFrame:
    fixed_and_gates = per_image[per_image["kind"].isin(["fixed", "gate"])]
    if "image_pq" not in per_image or fixed_and_gates[fixed_and_gates["kind"] == "fixed"].empty:
        return fixed_and_gates
    return pd.concat([fixed_and_gates, oracle_rows(fixed_and_gates)], ignore_index=True)


def _scene_evidence(config: Config, stats: ImageStats, fixed: list[str], full: str):
    scenes = image_attributes(config.data.val, config.data.root)
    if scenes is None:
        return None, None
    kinds = pd.Series(stats.image_ids.astype(str)).map(scenes["scene"]).to_numpy()
    if not {"simple", "cluttered"} <= set(kinds):
        return scenes, None
    return scenes, scene_depth_gain(stats, kinds, fixed[0], full)


def gather(config: Config, summary: pd.DataFrame, per_image: pd.DataFrame, depth: DepthTable | None) -> Evidence:
    """Every number of the report: merged gates, bootstrap comparisons, scenes, the depth table's sweep."""
    gate_meta = _gate_meta(config, sorted(summary.loc[summary["kind"] == "gate", "variant"]))
    summary, per_image, merged = merge_identical_gates(summary, _with_oracle(per_image))
    fixed_rows = summary[summary["kind"] == "fixed"].sort_values("mean_layers")
    fixed, gates = fixed_rows["variant"].tolist(), summary.loc[summary["kind"] == "gate", "variant"].tolist()
    if not fixed:
        raise ValueError("the report needs fixed-depth results; evaluation.depths must list at least one depth")
    stats = ImageStats.from_rows(per_image)
    compared = gates + (["oracle"] if "oracle" in stats.variants else [])
    versus = versus_fixed(stats, fixed, fixed[-1], compared, seed=config.seed)
    depths = sorted({int(d) for d in fixed_rows["mean_layers"]} | set(config.model.gate.exits))
    evidence = Evidence(summary=summary, per_image=per_image, fixed=fixed, full=fixed[-1], gates=gates, merged=merged,
                        gate_meta=gate_meta, versus=versus.set_index("variant") if len(versus) else versus,
                        depths=depths, gate_exits=list(config.model.gate.exits))
    evidence.scenes, evidence.scene_gain = _scene_evidence(config, stats, fixed, fixed[-1])
    train_scenes = image_attributes(config.data.train, config.data.root)
    evidence.train_scene_counts = None if train_scenes is None else train_scenes["scene"].value_counts()
    if depth is not None and len(depth):
        cost, exits = config.gate.budget_unit, list(config.model.gate.exits)
        evidence.labels = ideal_exits_by_beta(depth, config.gate.betas, cost, exits)
        evidence.sweep = beta_sweep(depth, beta_grid(config.gate.betas), cost, exits)
        if np.isfinite(depth.difficulty).any():
            evidence.train_difficulty = pd.Series(depth.difficulty, index=pd.Index(depth.image_ids, name="image_id"))
    return evidence


def mean_depth_by_scene(evidence: Evidence) -> pd.DataFrame | None:
    """Each gate's mean chosen depth on each scene kind of the validation images (None without scenes)."""
    if evidence.scenes is None or not evidence.gates:
        return None
    rows = evidence.per_image[evidence.per_image["variant"].isin(evidence.gates)]
    scene = rows["image_id"].astype(str).map(evidence.scenes["scene"])
    return rows.assign(scene=scene).pivot_table(index="variant", columns="scene", values="depth", aggfunc="mean")


def depth_shares(evidence: Evidence) -> pd.DataFrame:
    """% of images per depth (columns: every depth shown): one row per beta of the depth table's ideal
    exits (training images) and one per gate (validation images)."""
    rows = {}
    for beta, labels in sorted((evidence.labels or {}).items()):
        rows[f"ideal, beta={beta:g} (training)"] = labels["label"].value_counts(normalize=True)
    for name in evidence.gates:
        depth = evidence.per_image.loc[evidence.per_image["variant"] == name, "depth"]
        beta = evidence.gate_meta.get(evidence.merged.get(name, [name])[0], {}).get("beta")
        rows[f"gate {name}{'' if beta is None else f', beta={beta:g}'} (validation)"] = depth.value_counts(normalize=True)
    table = pd.DataFrame({k: v.reindex(evidence.depths, fill_value=0.0) for k, v in rows.items()}).T
    return 100 * table.fillna(0.0)

