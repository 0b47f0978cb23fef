"""AllExitsEvaluator (no Ray) against an independent per-exit computation.

The parent here has random weights (``torch.manual_seed(0)``) saved as ``model_final.pth``;
the panoptic thresholds are lowered to 0 so that random logits still produce segments and
the PQ columns are not trivially 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecom2f import storage
from ecom2f.data import collate_samples
from ecom2f.evaluation import pq_single
from ecom2f.modeling import build_criterion, build_model, normalize_batch
from ecom2f.modeling.flops import encoder_gflops
from ecom2f.steps.depth.stages import AllExitsEvaluator, depth_dataset, per_image_seed
from tests.faults import FailOnceAtIndex
from tests.steps.conftest import tiny_config

EXITS = [1, 2, 3, 4, 5, 6]
OVERRIDES = ("model.test.object_mask_threshold=0.0", "model.test.overlap_threshold=0.0",
             "depth.gate_feature_grid=2", "gate.grid_sizes=[2]", "depth.batch_size=2")


@pytest.fixture(scope="module")
def random_parent(tiny_data_root, tmp_path_factory):
    config = tiny_config(tiny_data_root, tmp_path_factory.mktemp("runs"), *OVERRIDES)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    weights_uri = storage.join(config.storage.layout().parent, "model_final.pth")
    storage.write_bytes(weights_uri, _state_bytes(model))
    return config, model, weights_uri


def _state_bytes(model) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def test_rows_match_a_forward_per_exit(random_parent):
    config, model, weights_uri = random_parent
    evaluator = AllExitsEvaluator(config.model_dump(mode="json"), weights_uri, device="cpu")
    indices = np.array([3, 0, 5])
    out = evaluator({"index": indices})
    assert out["loss"].shape == (3, len(EXITS)) and not any(out["error"])

    dataset = depth_dataset(config)
    samples = [dataset[int(i)] for i in indices]
    metadata = dataset.metadata
    categories = {c.id: {"isthing": int(c.isthing)} for c in metadata.categories}
    criterion = build_criterion(config.model)
    batch = collate_samples(samples)
    pixels = normalize_batch(batch["images"], batch["padding_mask"], model)
    seen_segments = 0
    for e, k in enumerate(EXITS):
        with torch.no_grad():
            raw = model.forward_raw(pixels, depth=k)  # one full pass per exit: the reference
        predictions = model.predict([s["image"] for s in samples], depth=k, tasks=["panoptic", "semantic"],
                                    output_sizes=[s["orig_size"] for s in samples])
        for i, sample in enumerate(samples):
            target = {"labels": batch["targets"][i]["labels"], "masks": batch["targets"][i]["masks"].float()}
            # the loss of the exit's output: the last decoder layer, without the auxiliary ones
            one = {"pred_logits": raw["pred_logits"][i : i + 1], "pred_masks": raw["pred_masks"][i : i + 1]}
            generator = torch.Generator().manual_seed(per_image_seed(config.seed, int(indices[i])))
            with torch.no_grad():
                loss = float(criterion(one, [target], generator=generator)["total"])
            assert out["loss"][i, e] == pytest.approx(loss, rel=1e-4, abs=1e-5)

            ids, segments = predictions[i]["panoptic_seg"]
            segments = [{"id": s["id"], "category_id": metadata.contiguous_to_dataset_id[s["category_id"]]}
                        for s in segments]
            summary = pq_single(ids.numpy(), segments, sample["id_map"].numpy(), sample["segments_info"],
                                categories).summary(categories)
            for column, group, field in (("pq", "All", "pq"), ("sq", "All", "sq"), ("rq", "All", "rq"),
                                         ("pq_things", "Things", "pq"), ("pq_stuff", "Stuff", "pq")):
                expected = summary[group][field]
                got = out[column][i, e]
                assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected, abs=1e-6)
            assert out["num_pred_segments"][i, e] == len(segments)
            expected_miou = _image_miou(predictions[i]["sem_seg"].argmax(0).numpy(), sample, metadata)
            assert out["miou"][i, e] == pytest.approx(expected_miou, abs=1e-6)
            seen_segments += len(segments)
            assert out["encoder_gflops"][i, e] == pytest.approx(encoder_gflops(config.model, 64, 64, depth=k), rel=1e-6)
    assert seen_segments > 0  # the PQ comparison was not only of empty predictions
    assert np.all(np.diff(out["encoder_gflops"], axis=1) > 0)

    for i, sample in enumerate(samples):
        assert out["image_id"][i] == int(sample["image_id"])
        assert out["num_gt_segments"][i] == sum(not s.get("iscrowd", 0) for s in sample["segments_info"])
        assert out["difficulty"][i] == pytest.approx(sample["difficulty"])
        assert (out["height"][i], out["width"][i]) == tuple(sample["orig_size"])

    # Gate features: the coarsest projected backbone level, before any encoder layer.
    with torch.no_grad():
        coarsest = model.pixel_decoder.project(model.backbone(pixels))[0]  # [N, C, 2, 2] at 64 px
    assert coarsest.shape[-2:] == (2, 2)
    np.testing.assert_allclose(out["gate_mean"], coarsest.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["gate_max"], coarsest.amax((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    # A 2x2 grid of a 2x2 map is the map itself, cell by cell (row-major), channels together.
    np.testing.assert_allclose(out["gate_grid"], coarsest.permute(0, 2, 3, 1).flatten(1).numpy(), rtol=1e-5, atol=1e-6)


def _image_miou(prediction: np.ndarray, sample: dict, metadata) -> float:
    """Mean over the classes in the image's ground truth of |pred & gt| / |pred | gt|, void and crowd
    pixels left out: written out per class, independent of SemanticConfusion."""
    contiguous = metadata.dataset_id_to_contiguous
    id_map = sample["id_map"].numpy()
    truth = np.full(id_map.shape, -1)
    for segment in sample["segments_info"]:
        if not segment.get("iscrowd", 0):
            truth[id_map == segment["id"]] = contiguous[segment["category_id"]]
    labelled = truth >= 0
    ious = []
    for cls in np.unique(truth[labelled]):
        gt, pred = (truth == cls) & labelled, (prediction == cls) & labelled
        ious.append((gt & pred).sum() / (gt | pred).sum())
    return float(np.mean(ious))


def test_a_failing_batch_comes_back_as_error_rows(random_parent, tmp_path):
    config, _, weights_uri = random_parent
    marker = tmp_path / "failed"
    evaluator = AllExitsEvaluator(config.model_dump(mode="json"), weights_uri, device="cpu",
                                  fault=FailOnceAtIndex(1, str(marker)))
    first = evaluator({"index": np.array([0, 1])})
    assert list(first["error"]) == ["RuntimeError: injected failure on the batch holding image index 1"] * 2
    assert np.isnan(first["pq"]).all() and marker.exists()
    again = evaluator({"index": np.array([0, 1])})  # fails only once
    assert not any(again["error"]) and np.isfinite(again["loss"]).all()


def test_weights_of_another_model_fail_with_a_message(random_parent, tmp_path):
    config, _, _ = random_parent
    other = tiny_config(config.data.root, tmp_path, "model.decoder.hidden_dim=16")
    bad_uri = str(tmp_path / "other.pth")
    storage.write_bytes(bad_uri, _state_bytes(build_model(other.model)))
    with pytest.raises(ValueError, match="do not fit the configured model"):
        AllExitsEvaluator(config.model_dump(mode="json"), bad_uri, device="cpu")
