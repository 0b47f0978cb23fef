"""A crafted evaluation whose trade-off is known by construction, for the report's tests.

60 validation images, every other one cluttered. Every segment is matched (no FP, no FN), so an
image's PQ is the mean IoU of its segments:

- simple images: 2 segments (a thing of class 0, stuff of class 2), IoU 0.85 at every depth;
- cluttered images: 6 segments (things of classes 0 and 1, stuff of class 2), IoU 0.45 + 0.05 (k - 1) at depth k.

Gates: ``layers_3.0`` sends simple images to depth 2 and cluttered ones to 6 (the perfect gate);
``layers_4.0`` makes the same choices (the report merges the two); ``layers_5.0`` takes depth 5
everywhere, exactly a point of the fixed-depth curve. Encoder GFLOPs = 0.1 per layer, total = 1 +
encoder. The depth table (training images) follows the same rule on 40 images, over exits 2..6.
"""

from __future__ import annotations

import json

import pandas as pd

from ecom2f.evaluation import PQStat
from ecom2f.steps.depth.table import DepthTable
from ecom2f.steps.evaluate.summary import summarize

CATEGORIES = {0: {"isthing": 1}, 1: {"isthing": 1}, 2: {"isthing": 0}}
IMAGES = 60
GATES = {"layers_3.0": {"simple": 2, "cluttered": 6}, "layers_4.0": {"simple": 2, "cluttered": 6},
         "layers_5.0": {"simple": 5, "cluttered": 5}}
BETAS = {"layers_3.0": 0.01, "layers_4.0": 0.01, "layers_5.0": 0.0}


def scene(index: int) -> str:
    return "cluttered" if index % 2 == 0 else "simple"


def iou(kind: str, depth: int) -> float:
    return 0.85 if kind == "simple" else 0.45 + 0.05 * (depth - 1)


def _stat(kind: str, depth: int) -> dict:
    value = iou(kind, depth)
    classes = {0: 1, 2: 1} if kind == "simple" else {0: 3, 1: 2, 2: 1}
    return {c: {"iou": n * value, "tp": n, "fp": 0, "fn": 0} for c, n in classes.items()}


def _row(index: int, variant: str, kind: str, depth: int) -> dict:
    stat = _stat(scene(index), depth)
    return {"image_id": str(index + 1), "variant": variant, "kind": kind, "depth": depth,
            "image_pq": PQStat.from_dict(stat).summary(CATEGORIES)["All"]["pq"], "pq_stat": json.dumps(stat),
            "seconds": 0.01 + 0.002 * depth, "encoder_gflops": 0.1 * depth, "total_gflops": 1 + 0.1 * depth,
            "difficulty": 0.1 if scene(index) == "simple" else 0.6}


def per_image_rows() -> pd.DataFrame:
    rows = [_row(i, f"depth_{k}", "fixed", k) for k in range(1, 7) for i in range(IMAGES)]
    rows += [_row(i, name, "gate", choice[scene(i)]) for name, choice in GATES.items() for i in range(IMAGES)]
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    estimates = {name: {"pq": 0.7, "mean_layers": 4.0} for name in GATES}
    return summarize(rows, CATEGORIES, estimates=estimates)


def depth_table(images: int = 40) -> DepthTable:
    rows = [{"image_id": i + 1, "exit": k, "pq": iou(scene(i), k), "encoder_gflops": 0.1 * k, "loss": 1.0,
             "difficulty": 0.1 if scene(i) == "simple" else 0.6} for i in range(images) for k in range(2, 7)]
    return DepthTable.from_rows(pd.DataFrame(rows))


def dataset_json(folder) -> dict:
    """A panoptic JSON recording each validation image's scene; returns the split's spec."""
    folder.mkdir(parents=True, exist_ok=True)
    annotations = [{"image_id": i + 1, "file_name": f"{i + 1}.png", "segments_info": [], "scene": scene(i),
                    "difficulty": 0.1 if scene(i) == "simple" else 0.6} for i in range(IMAGES)]
    (folder / "panoptic.json").write_text(json.dumps({"images": [], "annotations": annotations, "categories": []}))
    return {"format": "coco_panoptic", "image_root": str(folder), "json": str(folder / "panoptic.json"),
            "png_root": str(folder)}


def gate_metadata(layout, storage) -> None:
    """Each gate's ``gate.json`` where step 3 puts it (beta and budget only: what the report reads)."""
    from ecom2f.storage.layout import gate_files

    for name, beta in BETAS.items():
        budget = float(name.split("_")[1])
        storage.write_text(gate_files(layout.gate(name))[1],
                           json.dumps({"beta": beta, "budget": budget, "budget_unit": "layers"}))


__all__ = ["CATEGORIES", "GATES", "IMAGES", "dataset_json", "depth_table", "gate_metadata", "iou",
           "per_image_rows", "scene", "summary"]
