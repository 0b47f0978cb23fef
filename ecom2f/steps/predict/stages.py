"""The three stages of ``ecom2f predict`` (no Ray here: the in-process runner calls them in turn,
the Ray runner hands them to :func:`ecom2f.steps.ray_cluster.load_model_score`).

1. :class:`PredictLoader` (CPU): read and decode each image (``images.decode_user_image``); an image
   that cannot be used leaves with its ``problem`` instead (a counted skip, never a crash).
2. :class:`PredictModel` (model actor): the run's :class:`Predictor` on the batch; results leave
   compact (:func:`formats.compact`: small integer maps, RLE masks).
3. :class:`PredictWriter` (CPU): each image's files (panoptic PNG, semantic PNG, overlay) and its
   record (the rows of the merged JSON files and of the table), as JSON text.

Rows: ``index`` (position in the input list), ``shard``, ``source``, ``name``, ``image_id`` (JSON
text: an int or a name), then ``image``/``problem``, then ``result``, then ``record``.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from ecom2f import storage
from ecom2f.steps.packing import pack, unpack
from ecom2f.steps.predict.formats import (
    compact,
    instance_records,
    panoptic_png_bytes,
    panoptic_record,
    semantic_png_bytes,
)
from ecom2f.steps.predict.images import ImageRejected, decode_user_image
from ecom2f.steps.predict.layout import PredictLayout
from ecom2f.steps.runs import worker_config

log = logging.getLogger(__name__)

__all__ = ["PASSED_THROUGH", "PredictLoader", "PredictModel", "PredictWriter"]

PASSED_THROUGH = ("index", "shard", "source", "name", "image_id")


def _through(batch: dict) -> dict:
    return {key: np.asarray(batch[key]) for key in PASSED_THROUGH}


class PredictLoader:
    """Adds ``image`` (a packed ``{"rgb", "notes"}`` cell, ``b""`` when refused) and ``problem`` ("" when fine)."""

    def __init__(self, max_pixels: int, storage_environment: dict | None = None) -> None:
        os.environ.update(storage_environment or {})
        self.max_pixels = max_pixels

    def __call__(self, batch: dict) -> dict:
        images, problems = [], []
        for uri in batch["source"]:
            try:
                decoded = decode_user_image(storage.read_bytes(str(uri)), str(uri), self.max_pixels)
                images.append(pack({"rgb": decoded.rgb, "notes": decoded.notes}))
                problems.append("")
            except ImageRejected as error:
                images.append(b"")
                problems.append(f"{error.kind}: {error}")
            except storage.StorageNotFoundError:
                images.append(b"")
                problems.append(f"missing: {uri} does not exist")
            except storage.StorageError as error:  # after the storage layer's retries
                images.append(b"")
                problems.append(f"storage: {error}")
        return {**_through(batch), "image": np.array(images, dtype=object), "problem": np.array(problems, dtype=object)}


class PredictModel:
    """Adds ``result`` (a packed :func:`compact` cell; ``b""`` for refused images).

    Args:
        config: the run's resolved config (``config.model_dump(mode="json")``).
        budget / depth: the gate to use, or a fixed depth (as :meth:`Predictor.resolve`).
        device: default ``serving.device``.
    """

    def __init__(self, config: dict, budget: str | None = None, depth: int | None = None,
                 device: str | None = None) -> None:
        from ecom2f.steps.predict.predictor import Predictor

        torch.set_num_threads(max(1, int(os.environ.get("ECOM2F_PREDICT_THREADS", torch.get_num_threads()))))
        self.config = worker_config(config, source="ecom2f predict")
        # Only the gate this job uses (none for a fixed depth); None: all, to find the default one.
        budgets = [] if depth is not None else ([budget] if budget is not None else None)
        self.predictor = Predictor.from_run(self.config, budgets=budgets, device=device)
        self.predictor.warm_up()
        self.budget, self.depth = self.predictor.resolve(budget, depth)[0], depth

    def __call__(self, batch: dict) -> dict:
        usable = [i for i, problem in enumerate(batch["problem"]) if not problem]
        rgbs = [unpack(batch["image"][i])["rgb"] for i in usable]
        results = [b""] * len(batch["problem"])
        if rgbs:
            predictions = self.predictor.predict(rgbs, budget=self.budget, depth=self.depth)
            for i, prediction in zip(usable, predictions):
                results[i] = pack(compact(prediction))
        return {**_through(batch), "image": np.asarray(batch["image"], dtype=object),
                "problem": np.asarray(batch["problem"], dtype=object), "result": np.array(results, dtype=object)}


class PredictWriter:
    """Writes each image's files under ``output`` and adds ``record`` (JSON text, see :meth:`record`).

    Args:
        output: the output folder (local or s3://).
        categories: contiguous class id -> ``{"id", "name", "isthing"}``.
        tasks: which outputs to write; vis: also write overlays; layers: the encoder's depth.
    """

    def __init__(self, output: str, categories: list[dict], tasks: list[str], vis: bool = False,
                 vis_quality: int = 90, layers: int = 6, storage_environment: dict | None = None) -> None:
        os.environ.update(storage_environment or {})
        self.layout = PredictLayout(output)
        self.categories = categories
        self.tasks = list(tasks)
        self.vis, self.vis_quality, self.layers = vis, vis_quality, layers

    def __call__(self, batch: dict) -> dict:
        records = []
        for i in range(len(batch["index"])):
            records.append(json.dumps(self.record(
                {key: batch[key][i] for key in PASSED_THROUGH}, str(batch["problem"][i]), batch["image"][i],
                batch["result"][i])))
        return {"index": np.asarray(batch["index"]), "shard": np.asarray(batch["shard"]),
                "record": np.array(records, dtype=object)}

    def record(self, row: dict, problem: str, image_cell: bytes, result_cell: bytes) -> dict:
        """One image's record: ``index, image_id, name, source, status`` ("ok" / "skipped"), ``problem``,
        ``notes`` and, when predicted, ``height, width, depth, budget, encoder_gflops, total_gflops,
        seconds, panoptic`` (COCO annotation) and ``instances`` (COCO results); its files are written first."""
        image_id = json.loads(str(row["image_id"]))
        base = {"index": int(row["index"]), "image_id": image_id, "name": str(row["name"]),
                "source": str(row["source"])}
        if problem:
            return {**base, "status": "skipped", "problem": problem, "notes": []}
        image, result = unpack(image_cell), unpack(result_cell)
        name = base["name"]
        record = {**base, "status": "ok", "problem": "", "notes": image["notes"], "height": result["size"][0],
                  "width": result["size"][1], **{key: result[key] for key in
                                                 ("depth", "budget", "encoder_gflops", "total_gflops", "seconds")}}
        if "ids" in result:
            storage.write_bytes(self.layout.panoptic_png(name), panoptic_png_bytes(result["ids"]))
            record["panoptic"] = panoptic_record(image_id, self.layout.panoptic_file_name(name), result["ids"],
                                                 result["segments"], self.categories)
        if "semantic" in result:
            storage.write_bytes(self.layout.semantic_png(name), semantic_png_bytes(result["semantic"]))
        if "instances" in result:
            record["instances"] = instance_records(image_id, result["instances"], self.categories)
        if self.vis:
            from ecom2f.steps.predict.visualize import overlay_jpeg

            storage.write_bytes(self.layout.vis_jpg(name),
                                overlay_jpeg(image["rgb"], result, self.categories, self.layers, self.vis_quality))
        return record
