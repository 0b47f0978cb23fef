"""The evaluation's three stages apart (no Ray): what the model stage ships, and what its time measures.

A random parent (``torch.manual_seed(0)``) with 64 queries: one variant's mask logits
``[Q, h/4, w/4]`` float32 are 16 bytes per image pixel, its instance masks as bool
``[M, H, W]`` M bytes per pixel; the model stage must ship small integer maps and RLE instead.
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch

from ecom2f import storage
from ecom2f.data.sample import semantic_label_map
from ecom2f.modeling import build_model
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former
from ecom2f.steps.evaluate.job import ValidationScorer
from ecom2f.steps.evaluate.stages import EvalLoader, VariantModel
from ecom2f.steps.ray_cluster import unpack
from tests.steps.conftest import tiny_config

QUERIES = 64
DETECTIONS = 10
BYTES_PER_PIXEL_AND_VARIANT = 4  # ids + semantic argmax (1 byte each here), RLE of <= 10 masks, spare


@pytest.fixture(scope="module")
def parent(tiny_data_root, tmp_path_factory):
    config = tiny_config(tiny_data_root, tmp_path_factory.mktemp("runs"), f"model.decoder.num_queries={QUERIES}",
                         f"model.test.detections_per_image={DETECTIONS}", "model.test.object_mask_threshold=0.0",
                         "evaluation.depths=[1,6]", "evaluation.tasks=[panoptic,semantic,instance]")
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build_model(config.model).state_dict(), buffer)
    weights_uri = storage.join(config.storage.layout().parent, "model_final.pth")
    storage.write_bytes(weights_uri, buffer.getvalue())
    return config.model_dump(mode="json"), weights_uri


def test_the_model_stage_ships_no_mask_logits_nor_dense_masks(parent):
    config, weights_uri = parent
    loader = EvalLoader(config)
    network = VariantModel(config, weights_uri, gate_dirs={}, device="cpu")
    shipped = network(loader({"index": np.array([0, 3])}))
    for i, index in enumerate([0, 3]):
        height, width = loader.dataset[index]["id_map"].shape
        variants = len(network.variants)
        logits_bytes = QUERIES * (height // 4) * (width // 4) * 4
        bound = variants * BYTES_PER_PIXEL_AND_VARIANT * height * width + 4096
        assert bound < variants * min(logits_bytes, DETECTIONS * height * width)
        assert len(shipped["result"][i]) <= bound
        for result in unpack(shipped["result"][i]):
            assert result["ids"].shape == result["semantic"].shape == (height, width)
            assert result["ids"].dtype == result["semantic"].dtype == np.uint8
            instances = result["instances"]
            assert len(instances["scores"]) == len(instances["classes"]) == len(instances["which"]) <= DETECTIONS
            assert all(isinstance(rle["counts"], bytes) for rle in instances["rle"])


def test_staged_rows_equal_the_model_predict_path(parent):
    """The three stages against model.predict and the metrics on its results, image by image: same
    PQ sums, confusion matrix and instance detections (RLE, score, class)."""
    from ecom2f.evaluation import MaskAPEvaluator, PanopticGroundTruth
    from ecom2f.evaluation.semantic import SemanticConfusion

    config, weights_uri = parent
    scorer = ValidationScorer(config, weights_uri, gate_dirs={}, device="cpu")
    rows = scorer({"index": np.array([1, 2])})
    model, dataset = scorer.network.model, scorer.loader.dataset
    categories = scorer.loader.scoring["categories"]
    to_contiguous = dataset.metadata.dataset_id_to_contiguous
    assert rows["variant"].tolist() == ["depth_1", "depth_1", "depth_6", "depth_6"]
    for _, row in rows.iterrows():
        sample = dataset[1 + int(row.name) % 2]
        (result,) = model.predict([sample["image"]], depth=int(row["depth"]),
                                  tasks=["panoptic", "semantic", "instance"], output_sizes=[tuple(sample["id_map"].shape)])
        segments = [{"id": s["id"], "category_id": to_contiguous[s["category_id"]], "iscrowd": s.get("iscrowd", 0)}
                    for s in sample["segments_info"]]
        stat = PanopticGroundTruth(sample["id_map"].numpy(), segments, categories).pq(*result["panoptic_seg"])
        assert row["image_id"] == str(sample["image_id"])
        assert row["pq_stat"] == json.dumps(stat.to_dict())
        expected = SemanticConfusion(len(categories), ignore_index=dataset.metadata.ignore_label)
        expected.update(result["sem_seg"].argmax(0), semantic_label_map(sample, dataset.metadata.ignore_label))
        np.testing.assert_array_equal(pickle.loads(row["semantic_state"]).matrix, expected.matrix)
        detections = MaskAPEvaluator(category_ids=dataset.metadata.thing_classes)
        things = sample["is_thing"]
        instances = result["instances"]
        detections.update({"masks": instances.masks, "scores": instances.scores, "classes": instances.classes},
                          {"masks": sample["masks"][things], "classes": sample["labels"][things],
                           "iscrowd": sample["iscrowd"][things]})
        staged = pickle.loads(row["instance_state"])
        assert staged._gt == detections._gt and len(staged._dt) == len(detections._dt) > 0
        # Scores to float rounding only: the stages ran both images in one batch, predict one.
        assert [{**d, "score": 0} for d in staged._dt] == [{**d, "score": 0} for d in detections._dt]
        np.testing.assert_allclose([d["score"] for d in staged._dt], [d["score"] for d in detections._dt], rtol=1e-5)


def test_recorded_time_is_the_batch_own_pass_never_the_warm_up(parent, monkeypatch):
    """The clock counts network passes instead of seconds: a variant's recorded time on a batch of
    2 is exactly 1 pass / 2 images when only that batch's pass lies between its two readings."""
    config, weights_uri = parent
    passes = {"n": 0}
    forward_raw = EarlyExitMask2Former.forward_raw

    def counted(self, *args, **kwargs):
        passes["n"] += 1
        return forward_raw(self, *args, **kwargs)

    monkeypatch.setattr(EarlyExitMask2Former, "forward_raw", counted)
    network = VariantModel(config, weights_uri, gate_dirs={}, device="cpu", clock=lambda: float(passes["n"]))
    assert passes["n"] == len(network.variants) == 2  # the warm-up ran every variant once, at start
    batch = EvalLoader(config)({"index": np.array([0, 1])})
    for _ in range(2):  # the first batch after start, then a later one
        for image in network(batch)["result"]:
            assert [v["seconds"] for v in unpack(image)] == [0.5, 0.5]
    assert passes["n"] == 2 + 2 * 2
