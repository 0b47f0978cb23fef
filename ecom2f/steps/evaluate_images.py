"""Per-image scoring for the end-to-end evaluation: no Ray here, so tests can call it directly.

A *variant* is one way of choosing each image's encoder depth: a fixed depth
(``("fixed", "depth_4", 4)``) or a chosen gate (``("gate", "<budget-name>", "gate")``, with
the gate's weights loaded into the model). :func:`score_batch` runs ``model.predict`` once
per variant on a batch and returns one row per (image, variant) with the image's PQ sums
(mergeable into the dataset PQ), its depth, its cost and the time it took.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import time
from collections.abc import Sequence

import numpy as np
import torch

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config_sections import dataset_spec
from ecom2f.data import build_dataset
from ecom2f.data.sample import semantic_label_map
from ecom2f.data.transforms import inference_resize
from ecom2f.evaluation import MaskAPEvaluator, PanopticGroundTruth, PQStat, SemanticConfusion
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former, build_model
from ecom2f.modeling.flops import encoder_gflops, model_gflops
from ecom2f.modeling.gate import Gate

__all__ = [
    "validation_dataset",
    "load_parent",
    "load_chosen_gate",
    "categories_of",
    "score_batch",
    "Variant",
]

# (kind, name, depth spec for model.predict): kind is "fixed" or "gate".
Variant = tuple[str, str, object]


def validation_dataset(config: Config, dataset=None):
    """The evaluation split at test resolution; ground truth stays at the original size."""
    transform = inference_resize(config.data.test_min_size, config.data.test_max_size)
    return build_dataset(
        dataset_spec(dataset or config.data.val),
        strict=config.data.strict,
        max_bad_fraction=config.data.max_bad_fraction,
        transform=transform,
        root=config.data.root,
    )


def load_parent(config: Config, weights_uri: str) -> EarlyExitMask2Former:
    """``build_model(config.model)`` with the parent's state_dict from storage, in eval mode."""
    if not storage.exists(weights_uri):
        raise FileNotFoundError(f"parent weights {weights_uri} do not exist; run step 1 (ecom2f train-parent) first")
    state = torch.load(io.BytesIO(storage.read_bytes(weights_uri)), map_location="cpu", weights_only=True)
    model = build_model(config.model)
    model.load_state_dict(state)
    return model.eval()


def load_chosen_gate(gate_dir: str, channels: int) -> tuple[Gate, dict]:
    """A chosen gate from ``<run>/gates/<name>/{gate.pt, gate.json}`` -> (Gate, metadata).

    Uses step 3's ``load_gate`` when it is installed; otherwise reads the agreed layout:
    ``gate.json`` holds the gate's ``GateConfig`` under ``"gate"`` (or ``"gate_config"``),
    ``gate.pt`` its state_dict.
    """
    try:
        from ecom2f.steps.gate_search import load_gate
    except ImportError:
        try:
            from ecom2f.steps.gate_store import load_gate
        except ImportError:
            load_gate = None
    if load_gate is not None:
        return load_gate(gate_dir)
    from ecom2f.modeling.config import GateConfig

    meta_uri, weights_uri = storage.join(gate_dir, "gate.json"), storage.join(gate_dir, "gate.pt")
    for uri in (meta_uri, weights_uri):
        if not storage.exists(uri):
            raise FileNotFoundError(f"{uri} is missing: {gate_dir} is not a complete chosen gate (rerun step 3)")
    meta = json.loads(storage.read_text(meta_uri))
    gate_fields = meta.get("gate", meta.get("gate_config"))
    if gate_fields is None:
        raise ValueError(f"{meta_uri} has no 'gate' (GateConfig) entry; keys are {sorted(meta)}")
    gate = Gate(channels, GateConfig.model_validate(gate_fields))
    state = torch.load(io.BytesIO(storage.read_bytes(weights_uri)), map_location="cpu", weights_only=True)
    gate.load_state_dict(state)
    return gate.eval(), meta


def categories_of(metadata) -> dict[int, dict]:
    """Contiguous category id -> ``{"isthing": 0/1}`` (the id space predictions use)."""
    return {i: {"isthing": int(c.isthing)} for i, c in enumerate(metadata.categories)}


def _gt_for_pq(sample: dict, to_contiguous: dict[int, int]) -> tuple[np.ndarray, list[dict]]:
    # The dataset's segments_info carries dataset category ids; predictions carry contiguous ids.
    segments = [
        {"id": int(s["id"]), "category_id": to_contiguous[int(s["category_id"])], "iscrowd": int(s.get("iscrowd", 0))}
        for s in sample["segments_info"]
    ]
    return sample["id_map"].numpy(), segments


def score_batch(
    model: EarlyExitMask2Former,
    samples: Sequence[dict],
    variants: Sequence[Variant],
    metadata,
    tasks: Sequence[str] = ("panoptic",),
) -> list[dict]:
    """One row per (image, variant).

    Args:
        samples: dataset samples (``image`` uint8 ``[3, h, w]`` at test size, ``id_map`` ``[H, W]`` at
            the original size, ``segments_info`` with dataset ids).
        variants: see :data:`Variant`; a gate variant needs that gate loaded into ``model.gate``
            by the caller (one gate per model at a time).
    Returns rows with ``image_id, variant, kind, depth, image_pq, pq_stat`` (JSON of the image's
    :class:`PQStat`), ``seconds`` (the batch's predict time / batch size), ``encoder_gflops``,
    ``total_gflops``, ``difficulty`` and, for the semantic / instance tasks, pickled
    ``semantic_state`` / ``instance_state`` accumulators.
    """
    categories = categories_of(metadata)
    to_contiguous = metadata.dataset_id_to_contiguous
    truths = [PanopticGroundTruth(*_gt_for_pq(s, to_contiguous), categories) for s in samples]
    images = [s["image"] for s in samples]
    out_sizes = [tuple(s["id_map"].shape) for s in samples]
    predict_tasks = ["panoptic", *[t for t in ("semantic", "instance") if t in tasks]]
    rows = []
    for kind, name, depth in variants:
        start = time.perf_counter()
        results = model.predict(images, depth=depth, tasks=predict_tasks, output_sizes=out_sizes)
        seconds = (time.perf_counter() - start) / len(samples)
        for sample, truth, result in zip(samples, truths, results):
            h, w = sample["image"].shape[-2:]
            k = int(result["depth"])
            ids, segments = result["panoptic_seg"]
            stat = truth.pq(ids.cpu().numpy(), segments)
            row = {
                "image_id": str(sample["image_id"]),
                "variant": name,
                "kind": kind,
                "depth": k,
                "image_pq": float(stat.summary(categories)["All"]["pq"]),
                "pq_stat": json.dumps(stat.to_dict()),
                "seconds": seconds,
                "encoder_gflops": encoder_gflops(model.config, h, w, k),
                "total_gflops": model_gflops(model, h, w, k),
                "difficulty": float(sample.get("difficulty", math.nan)),
            }
            if "semantic" in tasks:
                confusion = SemanticConfusion(len(categories), ignore_index=metadata.ignore_label)
                confusion.update(result["sem_seg"].argmax(0).cpu().numpy(), semantic_label_map(sample, metadata.ignore_label))
                row["semantic_state"] = pickle.dumps(confusion)
            if "instance" in tasks:
                row["instance_state"] = pickle.dumps(_instance_accumulator(sample, result["instances"], metadata))
            rows.append(row)
    return rows


def _instance_accumulator(sample: dict, instances, metadata) -> MaskAPEvaluator:
    thing_ids = metadata.thing_classes
    evaluator = MaskAPEvaluator(category_ids=thing_ids)
    things = sample["is_thing"]
    evaluator.update(
        {"masks": instances.masks.cpu(), "scores": instances.scores.cpu(), "classes": instances.classes.cpu()},
        {"masks": sample["masks"][things], "classes": sample["labels"][things], "iscrowd": sample["iscrowd"][things]},
    )
    return evaluator


def merge_pq(stats_json: Sequence[str]) -> PQStat:
    """Dataset PQ sums from per-image JSON :class:`PQStat` rows."""
    return sum((PQStat.from_dict(json.loads(s)) for s in stats_json), PQStat())
