"""Step 2's per-batch work: the parent at every exit on a batch of training images, in three stages.

The Ray Data job chains them (CPU actors, model actors, CPU actors; ``ecom2f.steps.ray_cluster``), so
decoding and scoring never leave the GPU idle:

1. :class:`DepthLoader` (CPU): dataset positions -> per image a ``sample`` cell (the test-time
   image and its training targets at that size, 1 bit per mask pixel) and a ``truth`` cell (what
   scoring needs: the id map at the original size, segments, semantic labels, ids, sizes).
2. :class:`AllExitsModel` (model actor): ``model.forward_all_exits`` once per batch (backbone and
   encoder once, pixel decoder and transformer decoder per exit; optionally under bf16 autocast),
   then per image and exit the criterion loss (fp32) and Mask2Former's panoptic ids and semantic
   argmax at the original size as small integer maps, plus the pooled gate features. Mask logits
   never leave the actor.
3. :class:`DepthScorer` (CPU): PQ/SQ/RQ (``ecom2f.evaluation.image_pq``, contiguous class ids as
   in the evaluation), mIoU and GFLOPs -> the table's columns.

:class:`AllExitsEvaluator` runs the three in one process (tests, ``depth_bench``). Images are the
test-time view (``inference_resize``), not augmented. mIoU is recorded where the dataset has
semantic labels (panoptic and semantic datasets: it has stuff categories, so every labelled pixel
has one class); for instance-only datasets it is NaN.

Every stage passes an ``error`` column along: a row that failed in an earlier stage is not worked
on, and reaches the job as a row with ``error`` set (the job leaves its shard incomplete).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.data.sample import semantic_label_map
from ecom2f.evaluation.panoptic_quality import contiguous_categories, contiguous_segments
from ecom2f.steps.inference import load_parent, network_precision
from ecom2f.steps.packing import compact_labels, pack, pack_masks, unpack, unpack_masks
from ecom2f.steps.runs import worker_config

log = logging.getLogger(__name__)

__all__ = [
    "AllExitsEvaluator", "AllExitsModel", "DepthLoader", "DepthScorer", "Fault", "depth_dataset", "depth_scoring",
    "per_image_seed",
]

# Called with a model batch's dataset positions ``[n]`` before the network runs; what it raises fails
# the batch like any error there (tests inject failures with it: ``tests/faults.py``).
Fault = Callable[[np.ndarray], None]

# Per-exit columns of a result batch, each [images, exits]; the per-image ones are [images].
EXIT_FLOAT_COLUMNS = ("loss", "pq", "sq", "rq", "pq_things", "pq_stuff", "miou", "encoder_gflops")
EXIT_INT_COLUMNS = ("num_pred_segments",)
IMAGE_COLUMNS = ("index", "image_id", "height", "width", "num_gt_segments", "difficulty", "error")
FEATURE_COLUMNS = ("gate_mean", "gate_max", "gate_grid")


def depth_dataset(config: Config):
    """The images step 2 scores: ``depth.dataset`` (default ``data.train``) at test-time size, no augmentation."""
    from ecom2f.data import build_dataset

    return build_dataset(
        dataset_spec(config.depth.dataset or config.data.train),
        strict=config.data.strict,
        max_bad_fraction=config.data.max_bad_fraction,
        transform=step2_resize(config.data.test_min_size, config.data.test_max_size),
        root=config.data.root,
    )


def step2_resize(short_side: int, max_size: int):
    """detectron2's test-time ResizeShortestEdge(short_side, max_size)."""
    from ecom2f.data import inference_resize

    return inference_resize(short_side, max_size)


def depth_scoring(metadata) -> dict:
    """What the loader and scorer need from the dataset's metadata (plain values: it travels to Ray
    actors). Categories in contiguous ids, those of the model's predictions."""
    return {
        "categories": contiguous_categories(metadata.categories),
        "to_contiguous": dict(metadata.dataset_id_to_contiguous),
        "num_classes": metadata.num_classes,
        "ignore_label": metadata.ignore_label,
        "semantic": bool(metadata.stuff_classes),
    }


def per_image_seed(seed: int, index: int) -> int:
    """The point-sampling seed of one image: the same for all its exits, so their losses compare fairly."""
    return (seed * 1_000_003 + index) % (2**63 - 1)


def _image_id(sample: dict, index: int) -> int:
    # COCO ids are ints; datasets keyed by file stems (semantic) use the dataset position.
    try:
        return int(sample["image_id"])
    except (TypeError, ValueError):
        return int(index)


def _message(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------- stage 1: load (CPU)


class DepthLoader:
    """``{"index": [n]}`` -> ``index, error, sample, truth`` (``sample``/``truth``: one packed cell per image)."""

    def __init__(self, config_dict: dict) -> None:
        self.config = worker_config(config_dict, source="step 2's config")
        self.dataset = depth_dataset(self.config)
        self.scoring = depth_scoring(self.dataset.metadata)

    def __call__(self, batch: dict) -> dict:
        indices = np.asarray(batch["index"], dtype=np.int64)
        columns = {"error": [], "sample": [], "truth": []}
        for index in indices.tolist():
            try:
                sample = self.dataset[index]
                cells = ("", pack(model_input(sample)), pack(self.truth(sample, index)))
            except Exception as error:  # noqa: BLE001 - the row carries it to the job
                log.exception("step 2 could not load image %d", index)
                cells = (_message(error), b"", b"")
            for name, cell in zip(columns, cells):
                columns[name].append(cell)
        return {"index": indices, **{name: np.array(cells, dtype=object) for name, cells in columns.items()}}

    def truth(self, sample: dict, index: int) -> dict:
        """What scoring needs, at the original size: ids ``[H, W]``, segments (contiguous ids), semantic
        labels ``[H, W]``."""
        truth = {
            "image_id": _image_id(sample, index), "orig_size": tuple(int(v) for v in sample["orig_size"]),
            "image_size": tuple(int(v) for v in sample["image_size"]),
            "num_gt_segments": int((~sample["iscrowd"]).sum()),
            "difficulty": float(sample.get("difficulty", math.nan)),
            "id_map": compact_labels(sample["id_map"].numpy()),
            "segments": contiguous_segments(sample["segments_info"], self.scoring["to_contiguous"]),
        }
        if self.scoring["semantic"]:
            truth["semantic"] = compact_labels(semantic_label_map(sample, self.scoring["ignore_label"]))
        return truth


def model_input(sample: dict) -> dict:
    """The test-time image ``[3, h, w]`` uint8 and the training targets at that size: crowd dropped,
    GT masks resized like the image (nearest), packed 1 bit per pixel."""
    from ecom2f.data import training_targets

    target = training_targets(sample)
    masks = target["masks"].float()
    height, width = (int(v) for v in sample["image_size"])
    if masks.shape[0]:
        masks = F.interpolate(masks[None], size=(height, width), mode="nearest")[0]
    else:
        masks = masks.new_zeros((0, height, width))
    return {"image": sample["image"].numpy(), "image_size": (height, width),
            "orig_size": tuple(int(v) for v in sample["orig_size"]),
            "labels": target["labels"].numpy(), "masks": pack_masks(masks.numpy() > 0.5)}


# ----------------------------------------------------------------------------- stage 2: the network


class AllExitsModel:
    """``index, error, sample, truth`` -> ``index, error, truth, result`` (``truth`` passed through).

    ``result`` per image: ``loss [E]``, per exit ``{"ids": [H, W] small uint, "segments": [{"id",
    "category_id" (contiguous)}], "semantic": [H, W] small uint or None}`` at the original size, and
    ``gate_mean``/``gate_max`` ``[C]``, ``gate_grid`` ``[C*G*G]`` float32.

    Args:
        config_dict: the run's resolved config (``config.model_dump(mode="json")``).
        weights_uri: the parent's weights (``RunLayout.parent_weights``, local or s3://), loaded once here.
        semantic: also return each exit's semantic argmax (``depth_scoring(...)["semantic"]``).
        device: default ``cuda`` when available, else ``cpu``.
        fault: a :data:`Fault` hook (tests), called on every batch with rows to compute.
    """

    def __init__(self, config_dict: dict, weights_uri: str, semantic: bool = True, device: str | None = None,
                 fault: Fault | None = None) -> None:
        from ecom2f.modeling.criterion import build_criterion

        self.config = worker_config(config_dict, source="step 2's config")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_parent(self.config.model, weights_uri, self.device)
        self.criterion = build_criterion(self.config.model)
        self.exits = list(self.config.depth_exits)
        self.grid = self.config.depth.gate_feature_grid
        self.precision = self.config.depth.precision
        self.semantic = semantic
        self.fault = fault

    def __call__(self, batch: dict) -> dict:
        """A batch that raises comes back with ``error`` set on all its rows (and no result)."""
        indices = np.asarray(batch["index"], dtype=np.int64)
        errors = np.array(list(batch["error"]), dtype=object)
        results = np.array([b""] * len(indices), dtype=object)
        good = [i for i, error in enumerate(errors) if not error]
        try:
            if good and self.fault is not None:
                self.fault(indices)
            if good:
                inputs = [unpack(batch["sample"][i]) for i in good]
                for i, result in zip(good, self.run(inputs, indices[good])):
                    results[i] = pack(result)
        except Exception as error:  # noqa: BLE001 - reported per image, re-raised by the job
            log.exception("step 2 batch %s failed", indices.tolist())
            errors[good] = _message(error)
        return {"index": indices, "error": errors, "truth": np.array(list(batch["truth"]), dtype=object),
                "result": results}

    @torch.no_grad()
    def run(self, inputs: list[dict], indices: np.ndarray) -> list[dict]:
        """Per image (``model_input`` dicts) its losses, exits' compact predictions and gate features."""
        from ecom2f.modeling.preprocessing import normalize_and_pad

        cfg = self.model.config
        images = [torch.from_numpy(x["image"]).to(self.device) for x in inputs]
        pixels, sizes = normalize_and_pad(images, cfg.pixel_mean, cfg.pixel_std, cfg.size_divisibility)
        with network_precision(self.precision, self.device):
            result = self.model.forward_all_exits(pixels, self.exits)
        padded = tuple(pixels.shape[-2:])
        features = self._gate_features(result["coarsest"].float(), sizes, padded)
        out = []
        for i, x in enumerate(inputs):
            target = self._target(x, padded)
            seed = per_image_seed(self.config.seed, int(indices[i]))
            image = {"loss": [], "exits": [], **{name: values[i] for name, values in features.items()}}
            for k in self.exits:
                prediction = _one_image(result["outputs"][k], i)
                image["loss"].append(self._loss(prediction, target, seed))
                image["exits"].append(self._predict(prediction, padded, x["image_size"], x["orig_size"]))
            out.append(image)
        return out

    def _loss(self, prediction: dict, target: dict, seed: int) -> float:
        # The loss of what the exit outputs (the last decoder layer): the auxiliary layers would say
        # how intermediate predictions do, and cost 3-4x more (point sampling).
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return float(self.criterion(prediction, [target], generator=generator)["total"])

    def _target(self, x: dict, padded: tuple[int, int]) -> dict:
        """Training targets in the padded batch frame (the loader resized them like the image)."""
        masks = torch.from_numpy(unpack_masks(x["masks"])).float()
        height, width = x["image_size"]
        masks = F.pad(masks, (0, padded[1] - width, 0, padded[0] - height))
        return {"labels": torch.from_numpy(x["labels"]).to(self.device), "masks": masks.to(self.device)}

    def _predict(self, prediction: dict, padded, image_size, orig_size) -> dict:
        """Mask2Former's panoptic (and semantic) inference at the original size, as small integer maps."""
        from ecom2f.modeling.postprocessing import panoptic_inference, resize_masks_to_input, semantic_inference

        test = self.model.config.test
        logits = prediction["pred_logits"][0]
        masks = resize_masks_to_input(prediction["pred_masks"][0], padded, tuple(image_size), tuple(orig_size))
        ids, segments = panoptic_inference(logits, masks, self.model.config.thing_ids,
                                           test.object_mask_threshold, test.overlap_threshold)
        semantic = semantic_inference(logits, masks).argmax(0).cpu().numpy() if self.semantic else None
        return {"ids": compact_labels(ids.cpu().numpy()),
                "segments": [{"id": s["id"], "category_id": s["category_id"]} for s in segments],
                "semantic": None if semantic is None else compact_labels(semantic)}

    def _gate_features(self, coarsest: torch.Tensor, image_sizes, padded) -> dict:
        """Mean, max and GxG grid of each image's coarsest encoder input ``[C, h, w]``, padding cropped."""
        from ecom2f.modeling.gate import pool_gate_features, valid_cells

        cells = valid_cells(image_sizes, padded, coarsest.shape[-2:])
        means, maxes, grids = [], [], []
        for i, (height, width) in enumerate(cells):
            valid = coarsest[i : i + 1, :, :height, :width]
            means.append(pool_gate_features(valid, "mean")[0])
            maxes.append(valid.flatten(2).amax(-1)[0])
            grids.append(pool_gate_features(valid, "grid", self.grid)[0])
        return {name: torch.stack(values).cpu().numpy().astype(np.float32)
                for name, values in (("gate_mean", means), ("gate_max", maxes), ("gate_grid", grids))}


def _one_image(outputs: dict, i: int) -> dict:
    """Image ``i``'s final prediction in fp32 (``pred_logits [1, Q, K+1]``, ``pred_masks [1, Q, h, w]``)."""
    return {"pred_logits": outputs["pred_logits"][i : i + 1].float(),
            "pred_masks": outputs["pred_masks"][i : i + 1].float()}


# ----------------------------------------------------------------------------- stage 3: score (CPU)


class DepthScorer:
    """``index, error, truth, result`` -> the table's numpy columns, one entry per image:
    ``index, image_id, height, width, num_gt_segments, difficulty, error`` ``[n]``; ``loss, pq, sq, rq,
    pq_things, pq_stuff, miou, encoder_gflops, num_pred_segments`` ``[n, E]`` (E = exits);
    ``gate_mean, gate_max`` ``[n, C]``, ``gate_grid`` ``[n, C*G*G]``. Rows with ``error`` keep NaN values.

    Args:
        config_dict: the run's resolved config.
        scoring: :func:`depth_scoring` of the dataset's metadata.
    """

    def __init__(self, config_dict: dict, scoring: dict) -> None:
        self.config = worker_config(config_dict, source="step 2's config")
        self.exits = list(self.config.depth_exits)
        self.scoring = scoring
        self.categories = {int(k): v for k, v in scoring["categories"].items()}

    def __call__(self, batch: dict) -> dict:
        indices = np.asarray(batch["index"], dtype=np.int64)
        out = self._empty(indices, batch["error"])
        for row, error in enumerate(out["error"]):
            if error:
                continue
            try:
                self._score(out, row, unpack(batch["truth"][row]), unpack(batch["result"][row]))
            except Exception as failure:  # noqa: BLE001 - the row carries it to the job
                log.exception("step 2 could not score image %d", int(indices[row]))
                out["error"][row] = _message(failure)
        return out

    def _score(self, out: dict, row: int, truth: dict, result: dict) -> None:
        from ecom2f.evaluation import PanopticGroundTruth

        panoptic = PanopticGroundTruth(truth["id_map"], truth["segments"], self.categories)
        for e, (k, loss, exit_) in enumerate(zip(self.exits, result["loss"], result["exits"])):
            stats = self._quality(panoptic, truth.get("semantic"), exit_)
            for name, value in stats.items():
                out[name][row, e] = value
            out["loss"][row, e] = loss
            out["num_pred_segments"][row, e] = len(exit_["segments"])
            out["encoder_gflops"][row, e] = self._encoder_gflops(truth["image_size"], k)
        for name in FEATURE_COLUMNS:
            out[name][row] = result[name]
        out["image_id"][row] = truth["image_id"]
        out["height"][row], out["width"][row] = truth["orig_size"]
        out["num_gt_segments"][row] = truth["num_gt_segments"]
        out["difficulty"][row] = truth["difficulty"]

    def _quality(self, panoptic, semantic_truth, exit_: dict) -> dict:
        """The exit's panoptic prediction scored against the image's GT, and (with ``semantic_truth``
        ``[H, W]``) its semantic argmax's mIoU over the image's GT classes."""
        from ecom2f.evaluation import SemanticConfusion, image_pq

        stats = image_pq(panoptic, exit_["ids"], exit_["segments"]).averages()
        if semantic_truth is not None:
            confusion = SemanticConfusion(self.scoring["num_classes"], ignore_index=self.scoring["ignore_label"])
            confusion.update(exit_["semantic"], semantic_truth)
            stats["miou"] = confusion.summary()["mIoU"]
        return stats

    def _encoder_gflops(self, image_size: tuple[int, int], depth: int) -> float:
        # The image's own padded size, so the cost does not depend on what it was batched with.
        from ecom2f.modeling.flops import encoder_gflops

        div = max(self.config.model.size_divisibility, 1)
        height, width = (math.ceil(v / div) * div for v in image_size)
        return encoder_gflops(self.config.model, height, width, depth=depth)

    def _empty(self, indices: np.ndarray, errors) -> dict:
        n, num_exits = len(indices), len(self.exits)
        channels, grid = self.config.model.pixel_decoder.conv_dim, self.config.depth.gate_feature_grid
        out = {name: np.full((n, num_exits), np.nan, np.float32) for name in EXIT_FLOAT_COLUMNS}
        out["num_pred_segments"] = np.zeros((n, num_exits), np.int32)
        out.update(
            index=indices.copy(), image_id=np.full(n, -1, np.int64), height=np.zeros(n, np.int32),
            width=np.zeros(n, np.int32), num_gt_segments=np.zeros(n, np.int32),
            difficulty=np.full(n, np.nan, np.float32), error=np.array(list(errors), dtype=object),
            gate_mean=np.zeros((n, channels), np.float32), gate_max=np.zeros((n, channels), np.float32),
            gate_grid=np.zeros((n, channels * grid**2), np.float32),
        )
        return out


# ----------------------------------------------------------------------------- the three in one process


class AllExitsEvaluator:
    """Loader, model and scorer in this process: ``{"index": [n]}`` -> :class:`DepthScorer`'s columns.

    For tests and benchmarks; the job runs the stages as separate actor pools. Arguments as
    :class:`AllExitsModel`.
    """

    def __init__(self, config_dict: dict, weights_uri: str, device: str | None = None,
                 fault: Fault | None = None) -> None:
        self.loader = DepthLoader(config_dict)
        self.dataset = self.loader.dataset
        scoring = self.loader.scoring
        self.network = AllExitsModel(config_dict, weights_uri, semantic=scoring["semantic"], device=device,
                                     fault=fault)
        self.scorer = DepthScorer(config_dict, scoring)
        self.model, self.exits = self.network.model, self.network.exits

    def __call__(self, batch: dict) -> dict:
        return self.evaluate(np.asarray(batch["index"], dtype=np.int64))

    def evaluate(self, indices: np.ndarray) -> dict:
        return self.scorer(self.network(self.loader({"index": np.asarray(indices, dtype=np.int64)})))
