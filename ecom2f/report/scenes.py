"""Per-image attributes a dataset's JSON records beyond the annotations: the synthetic generator's
``scene`` kind (``simple`` / ``cluttered``) and ``difficulty`` score.

The evaluation's rows and the depth table carry ``difficulty`` only; the scene kind is read here,
from the annotation JSON of the split (``panoptic.json``), by image id.
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from ecom2f import storage
from ecom2f.config.data import dataset_spec
from ecom2f.data.registry import resolve_spec

log = logging.getLogger(__name__)

__all__ = ["image_attributes", "scene_table"]


def image_attributes(reference, root: str | None) -> pd.DataFrame | None:
    """``image_id`` (str) -> ``scene``, ``difficulty`` of a COCO-panoptic split whose annotations
    record a scene kind; None for other datasets (no scene, no JSON, another format)."""
    try:
        spec = resolve_spec(dataset_spec(reference), root)
    except (KeyError, ValueError):
        return None
    if spec.get("format") != "coco_panoptic" or not storage.exists(spec["json"]):
        return None
    annotations = json.loads(storage.read_text(spec["json"])).get("annotations", [])
    rows = [{"image_id": str(a["image_id"]), "scene": a["scene"], "difficulty": a.get("difficulty")}
            for a in annotations if "scene" in a]
    if not rows:
        return None
    return pd.DataFrame(rows).set_index("image_id")


def scene_table(per_image: pd.DataFrame, scenes: pd.Series, variants: list[str], pq_of) -> pd.DataFrame:
    """Dataset PQ (%) of each variant on each scene kind and on all images: rows ``variants``,
    columns the scene kinds then ``all``. ``pq_of(rows) -> float`` scores a variant's rows."""
    kinds = sorted(scenes.dropna().unique())
    table = {}
    for name in variants:
        rows = per_image[per_image["variant"] == name]
        kind_of_row = rows["image_id"].astype(str).map(scenes)
        table[name] = {**{k: pq_of(rows[kind_of_row == k]) for k in kinds}, "all": pq_of(rows)}
    return pd.DataFrame.from_dict(table, orient="index")
