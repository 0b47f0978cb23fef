"""Per-image work of the end-to-end evaluation, as three stages (no Ray here: tests call them directly).

A *variant* is one way of choosing each image's encoder depth: a fixed depth
(``("fixed", "depth_4", 4)``) or a chosen gate (``("gate", "<budget-name>", "gate")``, with
the gate's weights loaded into the model). The job chains (``ecom2f.steps.ray_cluster``):

1. :class:`EvalLoader` (CPU): dataset positions -> per image a ``sample`` cell (the test-size
   image, the output size) and a ``truth`` cell (id map, segments, semantic labels, thing masks).
2. :class:`VariantModel` (model actor): per variant, Mask2Former's inference on the batch
   (the network optionally under bf16 autocast, post-processing in fp32), timed on the device
   after a warm-up at actor start; results leave as small integer maps and RLE instance masks.
3. :class:`EvalScorer` (CPU): one row per (image, variant) with the image's PQ sums (mergeable
   into the dataset PQ; ``ecom2f.evaluation.image_pq``, contiguous class ids as in step 2), its
   depth, its cost, the time it took, and mIoU / mask-AP accumulators as plain arrays and JSON
   (:func:`semantic_cells`, :func:`instance_record`; :mod:`ecom2f.steps.evaluate.summary` merges them).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.data import build_dataset
from ecom2f.data.sample import semantic_label_map
from ecom2f.data.transforms import inference_resize
from ecom2f.evaluation import (
    PanopticGroundTruth,
    PQStat,
    SemanticConfusion,
    contiguous_categories,
    contiguous_segments,
    image_pq,
)
from ecom2f.steps.inference import DeviceClock, load_parent, network_precision
from ecom2f.steps.packing import compact_labels, pack, pack_masks, unpack, unpack_masks
from ecom2f.steps.runs import worker_config

log = logging.getLogger(__name__)

__all__ = [
    "EvalLoader",
    "EvalScorer",
    "Variant",
    "VariantModel",
    "eval_scoring",
    "fixed_depths",
    "instance_record",
    "semantic_cells",
    "validation_dataset",
]

# (kind, name, depth spec for the model): kind is "fixed" or "gate".
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


def fixed_depths(config: Config) -> list[int]:
    depths = config.evaluation.depths or list(range(1, config.model.pixel_decoder.encoder_layers + 1))
    bad = [d for d in depths if not 0 <= d <= config.model.pixel_decoder.encoder_layers]
    if bad:
        raise ValueError(f"evaluation.depths {depths}: {bad} outside 0..{config.model.pixel_decoder.encoder_layers}")
    return list(depths)


def eval_scoring(metadata, tasks: Sequence[str]) -> dict:
    """What the loader and scorer need from the dataset's metadata (plain values: it travels to actors)."""
    return {
        "categories": contiguous_categories(metadata.categories), "ignore_label": metadata.ignore_label,
        "thing_classes": list(metadata.thing_classes), "tasks": list(tasks),
        "to_contiguous": dict(metadata.dataset_id_to_contiguous),
    }


# ----------------------------------------------------------------------------- stage 1: load (CPU)


class EvalLoader:
    """``{"index": [n]}`` -> ``index, sample, truth`` (one packed cell per image)."""

    def __init__(self, config: dict) -> None:
        self.config = worker_config(config, source="the evaluation job")
        self.dataset = validation_dataset(self.config)
        self.scoring = eval_scoring(self.dataset.metadata, self.config.evaluation.tasks)

    def __call__(self, batch: dict) -> dict:
        indices = np.asarray(batch["index"], dtype=np.int64)
        samples = [self.dataset[i] for i in indices.tolist()]
        return {"index": indices,
                "sample": np.array([pack({"image": s["image"].numpy(), "output_size": tuple(s["id_map"].shape)})
                                    for s in samples], dtype=object),
                "truth": np.array([pack(self.truth(s)) for s in samples], dtype=object)}

    def truth(self, sample: dict) -> dict:
        """Ground truth at the original size: ids with contiguous-id segments, semantic labels, thing masks."""
        tasks = self.scoring["tasks"]
        segments = contiguous_segments(sample["segments_info"], self.scoring["to_contiguous"])
        truth = {"image_id": str(sample["image_id"]), "difficulty": float(sample.get("difficulty", math.nan)),
                 "id_map": compact_labels(sample["id_map"].numpy()), "segments": segments}
        if "semantic" in tasks:
            truth["semantic"] = compact_labels(semantic_label_map(sample, self.scoring["ignore_label"]))
        if "instance" in tasks:
            things = sample["is_thing"]
            truth["things"] = {"masks": pack_masks(sample["masks"][things].numpy()),
                               "classes": sample["labels"][things].numpy(),
                               "iscrowd": sample["iscrowd"][things].numpy()}
        return truth


# ----------------------------------------------------------------------------- stage 2: the network


class VariantModel:
    """``index, sample, truth`` -> ``index, truth, result`` (``truth`` passed through).

    ``result`` per image: one dict per variant with ``variant, kind, depth, seconds, encoder_gflops,
    total_gflops``, ``ids`` ``[H, W]`` small uint and ``segments`` (panoptic), ``semantic`` ``[H, W]``
    small uint (semantic task), ``instances`` (RLE masks, scores, classes; instance task).

    ``seconds`` is the variant's time on the batch / batch size: normalisation, the network and
    Mask2Former's post-processing, read after the device finished (``DeviceClock``); decoding,
    host copies and scoring are not in it. Every variant runs once on a random image at actor
    start, so no recorded time includes a warm-up. Gates are swapped into ``model.gate`` one
    at a time (a gate module is tiny; the network is shared).

    Args:
        config: the run's resolved config (``config.model_dump(mode="json")``).
        weights_uri: the parent's weights (``RunLayout.parent_weights``); ``gate_dirs``: name -> chosen gate folder.
        device: default ``cuda`` when available, else ``cpu``; ``clock``: the time source (tests).
    """

    def __init__(self, config: dict, weights_uri: str, gate_dirs: dict[str, str], device: str | None = None,
                 clock=None) -> None:
        torch.set_num_threads(max(1, int(os.environ.get("ECOM2F_EVAL_THREADS", "1"))))
        self.config = worker_config(config, source="the evaluation job")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_parent(self.config.model, weights_uri, self.device)
        self.gates = _load_gates(gate_dirs, self.device)
        self.variants: list[Variant] = [("fixed", f"depth_{d}", d) for d in fixed_depths(self.config)]
        self.variants += [("gate", name, "gate") for name in self.gates]
        self.tasks = ["panoptic", *[t for t in ("semantic", "instance") if t in self.config.evaluation.tasks]]
        self.clock = DeviceClock(self.device, *([clock] if clock else []))
        self._cost_cache: dict[tuple[int, int, int], dict] = {}
        self._warm_up()

    def __call__(self, batch: dict) -> dict:
        inputs = [unpack(cell) for cell in batch["sample"]]
        images = [torch.from_numpy(x["image"]) for x in inputs]
        output_sizes = [tuple(x["output_size"]) for x in inputs]
        per_image = [[] for _ in inputs]
        for variant in self.variants:
            for image, result in zip(per_image, self.run_variant(variant, images, output_sizes)):
                image.append(result)
        return {"index": np.asarray(batch["index"], dtype=np.int64),
                "truth": np.array(list(batch["truth"]), dtype=object),
                "result": np.array([pack(image) for image in per_image], dtype=object)}

    def run_variant(self, variant: Variant, images: list[torch.Tensor], output_sizes) -> list[dict]:
        """One variant on the batch, timed; per image its compact result."""
        kind, name, depth = variant
        parent_gate = self.model.gate
        try:
            if kind == "gate":
                self.model.gate = self.gates[name]
            start = self.clock()
            predictions = self._predict(images, depth, output_sizes)
            seconds = (self.clock() - start) / len(images)
        finally:
            self.model.gate = parent_gate
        out = []
        for image, prediction in zip(images, predictions):
            k = prediction["depth"]
            out.append({"variant": name, "kind": kind, "depth": k, "seconds": seconds,
                        **self._costs(*image.shape[-2:], k), **_compact(prediction)})
        return out

    @torch.no_grad()
    def _predict(self, images: list[torch.Tensor], depth, output_sizes) -> list[dict]:
        """Mask2Former's inference (as ``model.predict``), the network under ``evaluation.precision``.

        Per image ``depth``, ``panoptic_seg`` (ids ``[H, W]``, segments), ``semantic`` argmax ``[H, W]``,
        ``instances``, on the device.
        """
        from ecom2f.modeling.postprocessing import (
            instance_inference,
            panoptic_inference,
            resize_masks_to_input,
            semantic_inference,
        )
        from ecom2f.modeling.preprocessing import normalize_and_pad

        cfg, test = self.model.config, self.model.config.test
        pixels, sizes = normalize_and_pad([image.to(self.device) for image in images], cfg.pixel_mean, cfg.pixel_std,
                                          cfg.size_divisibility)
        with network_precision(self.config.evaluation.precision, self.device):
            raw = self.model.forward_raw(pixels, depth, image_sizes=sizes)
        logits, masks, padded = raw["pred_logits"].float(), raw["pred_masks"].float(), tuple(pixels.shape[-2:])
        results = []
        for i, (size, out_size) in enumerate(zip(sizes, output_sizes)):
            mask_pred = resize_masks_to_input(masks[i], padded, size, tuple(out_size))
            result = {"depth": int(raw["depths"][i]), "panoptic_seg": panoptic_inference(
                logits[i], mask_pred, cfg.thing_ids, test.object_mask_threshold, test.overlap_threshold)}
            if "semantic" in self.tasks:
                result["semantic"] = semantic_inference(logits[i], mask_pred).argmax(0)
            if "instance" in self.tasks:
                result["instances"] = instance_inference(logits[i], mask_pred, cfg.thing_ids,
                                                         test.detections_per_image, things_only=test.panoptic_on)
            results.append(result)
        return results

    def _costs(self, height: int, width: int, depth: int) -> dict:
        """``encoder_gflops`` and ``total_gflops`` of one image at its test size (not padded)."""
        from ecom2f.modeling.flops import encoder_gflops, model_gflops

        key = (int(height), int(width), int(depth))
        if key not in self._cost_cache:
            self._cost_cache[key] = {"encoder_gflops": encoder_gflops(self.model.config, *key),
                                     "total_gflops": model_gflops(self.model, *key)}
        return self._cost_cache[key]

    def _warm_up(self) -> None:
        """Every variant once on a random test-size image: lazy initialisation, kernel selection and
        allocator growth happen here, not in a timed batch."""
        side = min(self.config.data.test_min_size, self.config.data.test_max_size)
        image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        for variant in self.variants:
            self.run_variant(variant, [image], [(side, side)])


def _load_gates(gate_dirs: dict[str, str], device: torch.device) -> dict:
    """Name -> chosen gate (step 3's files), on ``device``; no gate, no import of step 3."""
    if not gate_dirs:
        return {}
    from ecom2f.steps.gate.store import load_gate

    return {name: load_gate(folder)[0].to(device) for name, folder in gate_dirs.items()}


def _compact(prediction: dict) -> dict:
    """Device results -> host values of about one byte per pixel: ids and classes as small uints,
    instance masks run-length encoded (COCO RLE)."""
    ids, segments = prediction["panoptic_seg"]
    out = {"ids": compact_labels(ids.cpu().numpy()), "segments": segments}
    if "semantic" in prediction:
        out["semantic"] = compact_labels(prediction["semantic"].cpu().numpy())
    if "instances" in prediction:
        instances = prediction["instances"]
        unique, which = _distinct_masks(instances.masks.cpu().numpy(), instances.query_index.tolist())
        out["instances"] = {"rle": _encode_masks(unique), "which": which, "size": tuple(ids.shape),
                            "scores": instances.scores.cpu().numpy(), "classes": instances.classes.cpu().numpy()}
    return out


def _distinct_masks(masks: np.ndarray, queries: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``[M, H, W]`` -> (distinct masks ``[U, H, W]``, ``which [M]``) with ``masks == distinct[which]``.

    Top-k instances repeat a query with other classes, and with it its mask: each is encoded
    once. Masks of one query are compared, not assumed equal.
    """
    distinct, which, seen = [], [], {}
    for mask, query in zip(masks, queries):
        j = seen.get(query)
        if j is None or not np.array_equal(distinct[j], mask):
            j = seen[query] = len(distinct)
            distinct.append(mask)
        which.append(j)
    stacked = np.stack(distinct) if distinct else np.zeros((0, *masks.shape[1:]), dtype=bool)
    return stacked, np.asarray(which, dtype=np.int64)


def _encode_masks(masks: np.ndarray) -> list[dict]:
    from pycocotools import mask as mask_utils

    if not len(masks):
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


# ----------------------------------------------------------------------------- stage 3: score (CPU)


def semantic_cells(confusion: SemanticConfusion) -> str:
    """The non-zero cells of an image's confusion matrix ``[gt, pred]`` as JSON: ``cells`` (flat index
    ``gt * K + pred``) and ``counts`` (pixels), int lists. An image touches few classes, so this is tens
    of numbers where the dense matrix holds K^2 (17,689 on COCO). JSON, like ``pq_stat``: a list column
    comes back from Ray Data as a pandas ArrowDtype that ``pandas.read_parquet`` cannot restore."""
    flat = confusion.matrix.reshape(-1)
    cells = np.flatnonzero(flat)
    return json.dumps({"cells": cells.astype(np.int64).tolist(), "counts": flat[cells].astype(np.int64).tolist()})


def instance_record(things: dict, instances: dict) -> str:
    """An image's mask-AP inputs as JSON: ``size [H, W]``; ``detections``: one COCO RLE ``counts``
    string per detection, ``scores``, ``classes``; ``truth``: RLE ``counts``, ``classes``, ``iscrowd``
    of the ground-truth things. :func:`ecom2f.steps.evaluate.summary.mask_ap_of` decodes the masks and
    feeds ``MaskAPEvaluator.update``, which sees exactly the masks the scorer saw."""
    truth_rles = _encode_masks(unpack_masks(things["masks"]))
    return json.dumps({
        "size": [int(v) for v in instances["size"]],
        "detections": {"counts": [instances["rle"][j]["counts"].decode("ascii") for j in instances["which"]],
                       "scores": np.asarray(instances["scores"], np.float64).tolist(),
                       "classes": np.asarray(instances["classes"], np.int64).tolist()},
        "truth": {"counts": [rle["counts"].decode("ascii") for rle in truth_rles],
                  "classes": np.asarray(things["classes"], np.int64).tolist(),
                  "iscrowd": np.asarray(things["iscrowd"], np.int64).tolist()},
    })


class EvalScorer:
    """``index, truth, result`` -> one row per (image, variant): ``image_id, variant, kind, depth,
    image_pq, pq_stat`` (JSON of the image's :class:`PQStat`), ``seconds``, ``encoder_gflops``,
    ``total_gflops``, ``difficulty`` and, for the semantic task, ``semantic`` (:func:`semantic_cells`),
    for the instance task ``instances`` (:func:`instance_record`): int arrays and RLE strings in JSON,
    never pickles, so the rows stay readable data.

    ``scoring``: :func:`eval_scoring` of the dataset's metadata.
    """

    def __init__(self, scoring: dict) -> None:
        self.scoring = scoring
        self.categories = {int(k): v for k, v in scoring["categories"].items()}

    def __call__(self, batch: dict) -> pd.DataFrame:
        per_image = [self.score_image(unpack(truth), unpack(result))
                     for truth, result in zip(batch["truth"], batch["result"])]
        # Variant by variant, the batch's images in order within each.
        return pd.DataFrame.from_records([row for rows in zip(*per_image) for row in rows])

    def score_image(self, truth: dict, variants: list[dict]) -> list[dict]:
        panoptic = PanopticGroundTruth(truth["id_map"], truth["segments"], self.categories)
        rows = []
        for result in variants:
            quality = image_pq(panoptic, result["ids"], result["segments"])
            row = {
                "image_id": truth["image_id"], "variant": result["variant"], "kind": result["kind"],
                "depth": int(result["depth"]), "image_pq": float(quality.pq),
                "pq_stat": json.dumps(quality.stat.to_dict()), "seconds": result["seconds"],
                "encoder_gflops": result["encoder_gflops"], "total_gflops": result["total_gflops"],
                "difficulty": truth["difficulty"],
            }
            if "semantic" in self.scoring["tasks"]:
                confusion = SemanticConfusion(len(self.categories), ignore_index=self.scoring["ignore_label"])
                confusion.update(result["semantic"], truth["semantic"])
                row["semantic"] = semantic_cells(confusion)
            if "instance" in self.scoring["tasks"]:
                row["instances"] = instance_record(truth["things"], result["instances"])
            rows.append(row)
        return rows


def merge_pq(stats_json: Sequence[str]) -> PQStat:
    """Dataset PQ sums from per-image JSON :class:`PQStat` rows."""
    return sum((PQStat.from_dict(json.loads(s)) for s in stats_json), PQStat())
