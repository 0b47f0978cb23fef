"""Step 2's per-batch work: the parent at every exit on a batch of training images.

:class:`AllExitsEvaluator` is the Ray Data UDF (one instance per actor: the weights and the
dataset index load once). For a batch of dataset indices it loads the samples itself, runs
``model.forward_all_exits`` once (backbone and encoder once, pixel decoder and transformer
decoder per exit), and returns, per image, every exit's criterion loss and PQ/SQ/RQ and the
image's gate features. Images are the test-time view (``inference_resize``), not augmented.

mIoU is recorded where the dataset has semantic labels (panoptic and semantic datasets: it has
stuff categories, so every labelled pixel has one class); for instance-only datasets it is NaN.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ecom2f.config import Config, config_from_dict
from ecom2f.config_sections import dataset_spec
from ecom2f.data.sample import semantic_label_map

log = logging.getLogger(__name__)

__all__ = ["AllExitsEvaluator", "FailOnceAtIndex", "depth_dataset", "load_parent_model", "per_image_seed"]

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


def load_parent_model(config: Config, weights_uri: str, device: torch.device):
    """``build_model(config.model)`` with the state dict at ``weights_uri`` (local or s3://), in eval mode."""
    from ecom2f import storage
    from ecom2f.modeling import build_model

    model = build_model(config.model)
    state = torch.load(io.BytesIO(storage.read_bytes(weights_uri)), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the weights at {weights_uri} do not fit the configured model ({error}); "
                         "was step 1 run with another model section?") from None
    return model.to(device).eval()


def per_image_seed(seed: int, index: int) -> int:
    """The point-sampling seed of one image: the same for all its exits, so their losses compare fairly."""
    return (seed * 1_000_003 + index) % (2**63 - 1)


@dataclass
class FailOnceAtIndex:
    """Fault injection for tests: the batch holding dataset index ``index`` fails the first time only."""

    index: int
    marker: str

    def __call__(self, indices) -> None:
        if self.index in set(int(i) for i in indices) and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(self.index))
            raise RuntimeError(f"injected failure on the batch holding image index {self.index}")


def _image_id(sample: dict, index: int) -> int:
    # COCO ids are ints; datasets keyed by file stems (semantic) use the dataset position.
    try:
        return int(sample["image_id"])
    except (TypeError, ValueError):
        return int(index)


class AllExitsEvaluator:
    """Ray Data UDF: ``{"index": [n] int64}`` -> per image results (see ``__call__``).

    Args:
        config_dict: the run's resolved config (``config.model_dump(mode="json")``).
        weights_uri: the parent's ``model_final.pth`` (local or s3://), loaded once here.
        device: default ``cuda`` when available, else ``cpu``.
        fail_once: tests only, ``{"index", "marker"}`` for :class:`FailOnceAtIndex`.
    """

    def __init__(self, config_dict: dict, weights_uri: str, device: str | None = None,
                 fail_once: dict | None = None) -> None:
        from ecom2f.steps.parent import build_criterion

        self.config = config_from_dict(config_dict, source="step 2's config")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_parent_model(self.config, weights_uri, self.device)
        self.criterion = build_criterion(self.config)
        self.dataset = depth_dataset(self.config)
        metadata = self.dataset.metadata
        self.categories = {c.id: {"isthing": int(c.isthing)} for c in metadata.categories}
        self.to_dataset_id = metadata.contiguous_to_dataset_id
        self.exits = list(self.config.depth_exits)
        self.grid = self.config.depth.gate_feature_grid
        self.fault = FailOnceAtIndex(**fail_once) if fail_once else None
        self.num_classes, self.ignore_label = metadata.num_classes, metadata.ignore_label
        self.semantic = bool(metadata.stuff_classes)

    def __call__(self, batch: dict) -> dict:
        """``batch["index"]``: dataset positions ``[n]``. Returns numpy columns, one entry per image:
        ``index, image_id, height, width, num_gt_segments, difficulty, error`` ``[n]``; ``loss, pq,
        sq, rq, pq_things, pq_stuff, miou, encoder_gflops, num_pred_segments`` ``[n, E]`` (E = exits);
        ``gate_mean, gate_max`` ``[n, C]``, ``gate_grid`` ``[n, C*G*G]``.

        A batch that raises comes back as rows with ``error`` set (and no values): the job then
        leaves those shards incomplete, finishes the others, and fails loudly at the end.
        """
        indices = np.asarray(batch["index"], dtype=np.int64)
        try:
            if self.fault is not None:
                self.fault(indices)
            return self.evaluate(indices)
        except Exception as error:  # noqa: BLE001 - reported per image, re-raised by the job
            log.exception("step 2 batch %s failed", indices.tolist())
            return self._failed(indices, f"{type(error).__name__}: {error}")

    # ----------------------------------------------------------------- the work
    @torch.no_grad()
    def evaluate(self, indices: np.ndarray) -> dict:
        from ecom2f.data import collate_samples
        from ecom2f.steps.parent import normalize_batch

        samples = [self.dataset[int(i)] for i in indices]
        batch = collate_samples(samples, size_divisibility=self.model.config.size_divisibility)
        pixels = normalize_batch(batch["images"], batch["padding_mask"], self.model)
        result = self.model.forward_all_exits(pixels, self.exits)
        padded = tuple(pixels.shape[-2:])
        n, num_exits = len(samples), len(self.exits)
        out = {name: np.full((n, num_exits), np.nan, np.float32) for name in EXIT_FLOAT_COLUMNS}
        out["num_pred_segments"] = np.zeros((n, num_exits), np.int32)
        targets = [self._target(sample, padded) for sample in samples]
        for i, sample in enumerate(samples):
            truth = self._ground_truth(sample)
            semantic_truth = semantic_label_map(sample, self.ignore_label) if self.semantic else None
            image_size = tuple(int(v) for v in sample["image_size"])
            for e, k in enumerate(self.exits):
                prediction = _one_image(result["outputs"][k], i)
                # The loss of what the exit outputs (the last decoder layer): the auxiliary layers
                # would say how intermediate predictions do, and cost 3-4x more (point sampling).
                generator = torch.Generator(device=self.device).manual_seed(per_image_seed(self.config.seed, int(indices[i])))
                out["loss"][i, e] = float(self.criterion(prediction, [targets[i]], generator=generator)["total"])
                stats, num_pred = self._quality(prediction, truth, semantic_truth, padded, image_size,
                                                sample["orig_size"])
                for name, value in stats.items():
                    out[name][i, e] = value
                out["num_pred_segments"][i, e] = num_pred
                out["encoder_gflops"][i, e] = self._encoder_gflops(image_size, k)
        out.update(self._gate_features(result["coarsest"], samples, padded))
        out.update(
            index=indices.copy(),
            image_id=np.array([_image_id(s, i) for s, i in zip(samples, indices)], np.int64),
            height=np.array([s["orig_size"][0] for s in samples], np.int32),
            width=np.array([s["orig_size"][1] for s in samples], np.int32),
            num_gt_segments=np.array([int((~s["iscrowd"]).sum()) for s in samples], np.int32),
            difficulty=np.array([s.get("difficulty", math.nan) for s in samples], np.float32),
            error=np.array([""] * n, dtype=object),
        )
        return out

    def _target(self, sample: dict, padded: tuple[int, int]) -> dict:
        """Training targets in the padded batch frame: GT masks resized like the image, then padded."""
        from ecom2f.data import training_targets

        target = training_targets(sample)
        masks = target["masks"].float()
        height, width = (int(v) for v in sample["image_size"])
        if masks.shape[0]:
            masks = F.interpolate(masks[None], size=(height, width), mode="nearest")[0]
        else:
            masks = masks.new_zeros((0, height, width))
        masks = F.pad(masks, (0, padded[1] - width, 0, padded[0] - height))
        return {"labels": target["labels"].to(self.device), "masks": masks.to(self.device)}

    def _ground_truth(self, sample: dict):
        from ecom2f.evaluation import PanopticGroundTruth

        return PanopticGroundTruth(sample["id_map"].numpy(), sample["segments_info"], self.categories)

    def _quality(self, prediction: dict, truth, semantic_truth, padded, image_size, orig_size) -> tuple[dict, int]:
        """Mask2Former's panoptic inference at the original size, scored against the image's GT, and
        (with ``semantic_truth`` ``[H, W]``) its semantic inference's mIoU over the image's GT classes."""
        from ecom2f.evaluation import SemanticConfusion
        from ecom2f.modeling.postprocessing import panoptic_inference, resize_masks_to_input, semantic_inference

        test = self.model.config.test
        masks = resize_masks_to_input(prediction["pred_masks"][0], padded, image_size, tuple(orig_size))
        ids, segments = panoptic_inference(prediction["pred_logits"][0], masks, self.model.config.num_things,
                                           test.object_mask_threshold, test.overlap_threshold)
        # Predictions use contiguous class ids, the dataset's segments_info dataset ids.
        segments = [{"id": s["id"], "category_id": self.to_dataset_id[s["category_id"]]} for s in segments]
        summary = truth.pq(ids.cpu().numpy(), segments).summary(self.categories)
        stats = {"pq": summary["All"]["pq"], "sq": summary["All"]["sq"], "rq": summary["All"]["rq"],
                 "pq_things": summary["Things"]["pq"], "pq_stuff": summary["Stuff"]["pq"]}
        if semantic_truth is not None:
            confusion = SemanticConfusion(self.num_classes, ignore_index=self.ignore_label)
            confusion.update(semantic_inference(prediction["pred_logits"][0], masks).argmax(0).cpu().numpy(),
                             semantic_truth)
            stats["miou"] = confusion.summary()["mIoU"]
        return stats, len(segments)

    def _encoder_gflops(self, image_size: tuple[int, int], depth: int) -> float:
        # The image's own padded size, so the cost does not depend on what it was batched with.
        from ecom2f.modeling.flops import encoder_gflops

        div = max(self.model.config.size_divisibility, 1)
        height, width = (math.ceil(v / div) * div for v in image_size)
        return encoder_gflops(self.model.config, height, width, depth=depth)

    def _gate_features(self, coarsest: torch.Tensor, samples: list[dict], padded) -> dict:
        """Mean, max and GxG grid of each image's coarsest encoder input ``[C, h, w]``, padding cropped."""
        from ecom2f.modeling.gate import pool_gate_features

        from ecom2f.modeling.gate import valid_cells

        cells = valid_cells([sample["image_size"] for sample in samples], padded, coarsest.shape[-2:])
        means, maxes, grids = [], [], []
        for i, (height, width) in enumerate(cells):
            valid = coarsest[i : i + 1, :, :height, :width].float()
            means.append(pool_gate_features(valid, "mean")[0])
            maxes.append(valid.flatten(2).amax(-1)[0])
            grids.append(pool_gate_features(valid, "grid", self.grid)[0])
        return {name: torch.stack(values).cpu().numpy().astype(np.float32)
                for name, values in (("gate_mean", means), ("gate_max", maxes), ("gate_grid", grids))}

    def _failed(self, indices: np.ndarray, message: str) -> dict:
        n, num_exits = len(indices), len(self.exits)
        channels = self.model.config.pixel_decoder.conv_dim
        out = {name: np.full((n, num_exits), np.nan, np.float32) for name in EXIT_FLOAT_COLUMNS}
        out["num_pred_segments"] = np.zeros((n, num_exits), np.int32)
        out.update(
            index=indices.copy(), image_id=np.full(n, -1, np.int64), height=np.zeros(n, np.int32),
            width=np.zeros(n, np.int32), num_gt_segments=np.zeros(n, np.int32),
            difficulty=np.full(n, np.nan, np.float32), error=np.array([message] * n, dtype=object),
            gate_mean=np.zeros((n, channels), np.float32), gate_max=np.zeros((n, channels), np.float32),
            gate_grid=np.zeros((n, channels * self.grid**2), np.float32),
        )
        return out


def _one_image(outputs: dict, i: int) -> dict:
    """Image ``i``'s final prediction (``pred_logits [1, Q, K+1]``, ``pred_masks [1, Q, h, w]``), no aux outputs."""
    return {"pred_logits": outputs["pred_logits"][i : i + 1], "pred_masks": outputs["pred_masks"][i : i + 1]}
