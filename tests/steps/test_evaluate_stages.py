"""The evaluation's three stages apart (no Ray): what the model stage ships, and what its time measures.

A random parent (``torch.manual_seed(0)``) with 64 queries: one variant's mask logits
``[Q, h/4, w/4]`` float32 are 16 bytes per image pixel, its instance masks as bool
``[M, H, W]`` M bytes per pixel; the model stage must ship small integer maps and RLE instead.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from ecom2f import storage
from ecom2f.data.sample import semantic_label_map
from ecom2f.modeling import build_model
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former
from ecom2f.steps.evaluate.job import ValidationScorer
from ecom2f.steps.evaluate.stages import EvalLoader, VariantModel
from ecom2f.steps.packing import unpack
from tests.steps.conftest import tiny_config

QUERIES = 64
DETECTIONS = 10
BYTES_PER_PIXEL_AND_VARIANT = 4  # ids + semantic argmax (1 byte each here), RLE of <= 10 masks, spare


@pytest.fixture(scope="module")
def parent(tiny_data_root, tmp_path_factory):
    config = tiny_config(tiny_data_root, tmp_path_factory.mktemp("runs"), f"model.decoder.num_queries={QUERIES}",
                         f"model.test.detections_per_image={DETECTIONS}", "model.test.object_mask_threshold=0.0",
                         # The seeded random parent of the three-level encoder detects instances on these images.
                         "model.pixel_decoder.in_features=[res3,res4,res5]",
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
    PQ sums, confusion matrix (from the row's non-zero cells) and instance detections and ground
    truth (masks decoded from the row's JSON, scores, classes)."""
    from ecom2f.evaluation import PanopticGroundTruth
    from ecom2f.evaluation.semantic import SemanticConfusion
    from ecom2f.steps.evaluate.summary import _masks

    config, weights_uri = parent
    scorer = ValidationScorer(config, weights_uri, gate_dirs={}, device="cpu")
    rows = scorer({"index": np.array([1, 2])})
    model, dataset = scorer.network.model, scorer.loader.dataset
    categories = scorer.loader.scoring["categories"]
    to_contiguous = dataset.metadata.dataset_id_to_contiguous
    assert rows["variant"].tolist() == ["depth_1", "depth_1", "depth_6", "depth_6"]
    detected = 0
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
        semantic = json.loads(row["semantic"])
        matrix = np.zeros(len(categories) ** 2, np.int64)
        matrix[np.asarray(semantic["cells"], np.int64)] = semantic["counts"]
        np.testing.assert_array_equal(matrix.reshape(expected.matrix.shape), expected.matrix)
        assert all(count > 0 for count in semantic["counts"])
        things = sample["is_thing"]
        instances = result["instances"]
        record = json.loads(row["instances"])
        assert record["size"] == list(sample["id_map"].shape)
        detected += len(instances.classes)
        np.testing.assert_array_equal(_masks(record["size"], record["detections"]["counts"]), instances.masks.numpy())
        assert record["detections"]["classes"] == instances.classes.tolist()
        # Scores to float rounding only: the stages ran both images in one batch, predict one.
        np.testing.assert_allclose(record["detections"]["scores"], instances.scores.numpy(), rtol=1e-5)
        np.testing.assert_array_equal(_masks(record["size"], record["truth"]["counts"]), sample["masks"][things].numpy())
        assert record["truth"]["classes"] == sample["labels"][things].tolist()
        assert record["truth"]["iscrowd"] == sample["iscrowd"][things].long().tolist()
    assert detected > 0, "the random parent must detect some instances, or the comparison is of empty lists"


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


def _edited_prediction(truth_ids: np.ndarray, segments: list[dict], num_classes: int):
    """A prediction made from an image's ground truth (contiguous ids): crowd regions and the first
    segment left void (a false negative), the second relabelled (a false positive and a negative),
    everything shifted one pixel right (IoUs below 1)."""
    ids = np.roll(truth_ids.astype(np.int64), 1, axis=1)
    kept = [s for s in segments if not s["iscrowd"]]
    for segment in [s for s in segments if s["iscrowd"]] + kept[:1]:
        ids[ids == segment["id"]] = 0
    predicted = [{"id": s["id"], "category_id": s["category_id"]} for s in kept[1:] if (ids == s["id"]).any()]
    predicted[0]["category_id"] = (predicted[0]["category_id"] + 1) % num_classes
    return ids, predicted


def test_step2_and_the_evaluation_give_a_prediction_the_same_pq(tiny_data_root, tmp_path):
    """The same predictions through both jobs' loaders and scorers (on the same split): identical
    per-image PQ, and equal to pq_single in the dataset's own ids."""
    from ecom2f.evaluation import pq_single
    from ecom2f.steps.depth.stages import DepthLoader, DepthScorer
    from ecom2f.steps.evaluate.stages import EvalScorer
    from ecom2f.steps.packing import pack

    config = tiny_config(tiny_data_root, tmp_path, "depth.dataset=synthetic_panoptic_val",
                         "evaluation.tasks=[panoptic]").model_dump(mode="json")
    depth_loader, eval_loader = DepthLoader(config), EvalLoader(config)
    depth_scorer, eval_scorer = DepthScorer(config, depth_loader.scoring), EvalScorer(eval_loader.scoring)
    metadata = eval_loader.dataset.metadata
    channels, grid = depth_scorer.config.model.pixel_decoder.conv_dim, depth_scorer.config.depth.gate_feature_grid
    indices = np.arange(len(eval_loader.dataset))
    truths, results, eval_pq, reference = [], [], [], []
    for index in indices:
        sample = eval_loader.dataset[int(index)]
        assert depth_loader.dataset[int(index)]["image_id"] == sample["image_id"]
        depth_truth = depth_loader.truth(sample, int(index))
        ids, segments = _edited_prediction(depth_truth["id_map"], depth_truth["segments"], metadata.num_classes)
        truths.append(pack(depth_truth))
        exit_ = {"ids": ids, "segments": segments, "semantic": depth_truth["semantic"]}
        results.append(pack({"loss": [0.0], "exits": [exit_], "gate_mean": np.zeros(channels),
                             "gate_max": np.zeros(channels), "gate_grid": np.zeros(channels * grid**2)}))
        (row,) = eval_scorer.score_image(eval_loader.truth(sample), [
            {"variant": "v", "kind": "fixed", "depth": 1, "seconds": 0.0, "encoder_gflops": 0.0, "total_gflops": 0.0,
             "ids": ids, "segments": segments}])
        eval_pq.append(row["image_pq"])
        in_dataset_ids = [{**s, "category_id": metadata.contiguous_to_dataset_id[s["category_id"]]} for s in segments]
        dataset_categories = [{"id": c.id, "isthing": int(c.isthing)} for c in metadata.categories]
        stat = pq_single(ids, in_dataset_ids, sample["id_map"].numpy(), sample["segments_info"], dataset_categories)
        reference.append(stat.summary(dataset_categories)["All"]["pq"])
    depth_rows = depth_scorer({"index": indices, "error": np.array([""] * len(indices), dtype=object),
                               "truth": np.array(truths, dtype=object), "result": np.array(results, dtype=object)})
    assert not any(depth_rows["error"])
    # The same numbers; the depth table keeps them as float32.
    np.testing.assert_array_equal(depth_rows["pq"][:, 0], np.asarray(eval_pq, dtype=np.float32))
    np.testing.assert_allclose(eval_pq, reference, rtol=0, atol=1e-12)
    assert 0.05 < min(eval_pq) and max(eval_pq) < 0.95  # edits that count: neither all wrong nor all right


def test_the_model_stage_loads_the_parent_strictly_with_step_2s_loader(parent, tmp_path):
    """Weights of another model section fail with what differs (as in step 2), missing ones say to run step 1."""
    config, _ = parent
    other = tiny_config(config["data"]["root"], tmp_path, "model.decoder.num_queries=4",
                        "model.pixel_decoder.in_features=[res3,res4,res5]")
    buffer = io.BytesIO()
    torch.save(build_model(other.model).state_dict(), buffer)
    wrong = str(tmp_path / "other.pth")
    storage.write_bytes(wrong, buffer.getvalue())
    with pytest.raises(ValueError, match=r"the weights .*other.pth do not fit the configured model: 2 shape mismatches "
                                         r"\(decoder.query_embed.weight \(4, 32\) where the model has \(64, 32\)"):
        VariantModel(config, wrong, gate_dirs={}, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"missing.pth do not exist; run step 1"):
        VariantModel(config, str(tmp_path / "missing.pth"), gate_dirs={}, device="cpu")
