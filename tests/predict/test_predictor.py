"""``Predictor``: built from a run, it gives model.predict's results (with the gate of the named budget
swapped in, the image resized to the test size, results at the image's size), the depth the gate
chose, that image's GFLOPs; a batch gives each image what it gets alone; bad choices are one-line
user errors that name what exists."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ecom2f import storage
from ecom2f.data.transforms import inference_resize
from ecom2f.errors import BadInputError, MissingStepError
from ecom2f.modeling.flops import encoder_gflops, model_gflops
from ecom2f.modeling.weights import load_parent_weights
from ecom2f.steps.gate.store import load_gate
from ecom2f.steps.predict.predictor import Predictor
from tests.predict.conftest import BUDGETS, PLANTED, make_run, sample_images


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(tiny_run)


def _reference(config, model, budget: str, image: np.ndarray) -> dict:
    """model.predict on the image as the run's test transform resizes it, with the budget's gate, results
    resized back to the image's size: built from the files directly, not through Predictor."""
    model.gate = load_gate(config.storage.layout().gate(budget))[0]
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    resized = inference_resize(config.data.test_min_size, config.data.test_max_size)({"image": tensor})["image"]
    (result,) = model.predict([resized], depth="gate", output_sizes=[image.shape[:2]])
    result["net_size"] = tuple(resized.shape[-2:])
    return result


def _assert_matches(prediction, reference: dict, where: str) -> None:
    assert prediction.depth == reference["depth"], where
    ids, segments = prediction.panoptic
    assert ids.shape == reference["panoptic_seg"][0].shape, where
    assert (ids != reference["panoptic_seg"][0]).sum() <= 2, where
    assert [s["category_id"] for s in segments] == [s["category_id"] for s in reference["panoptic_seg"][1]], where
    assert (prediction.semantic != reference["sem_seg"].argmax(0)).sum() <= 2, where
    torch.testing.assert_close(prediction.instances.scores, reference["instances"].scores, atol=1e-5, rtol=1e-4)
    assert torch.equal(prediction.instances.classes, reference["instances"].classes), where
    assert (prediction.instances.masks != reference["instances"].masks).sum() <= 4, where


def test_predictor_equals_model_predict_with_the_budgets_gate(tiny_run, predictor):
    images = sample_images()
    model = load_parent_weights(tiny_run.model, storage.read_bytes(tiny_run.storage.layout().parent_weights))
    for budget in BUDGETS:
        predictions = predictor.predict(images, budget=budget)
        assert [p.depth for p in predictions] == PLANTED[budget]
        for index, (image, prediction) in enumerate(zip(images, predictions)):
            reference = _reference(tiny_run, model, budget, image)
            _assert_matches(prediction, reference, f"{budget} image {index}")
            height, width = reference["net_size"]
            assert prediction.size == image.shape[:2] and prediction.budget == budget
            assert prediction.encoder_gflops == pytest.approx(encoder_gflops(tiny_run.model, height, width,
                                                                             prediction.depth))
            assert prediction.total_gflops == pytest.approx(model_gflops(predictor.model, height, width,
                                                                         prediction.depth))
            assert prediction.seconds > 0 and prediction.seconds == pytest.approx(sum(prediction.phases.values()))


def test_a_batch_gives_each_image_what_it_gets_alone(predictor):
    images = sample_images()
    batch = predictor.predict(images, budget="layers_5")
    for index, (image, prediction) in enumerate(zip(images, batch)):
        (alone,) = predictor.predict([image], budget="layers_5")
        assert prediction.depth == alone.depth
        assert (prediction.panoptic[0] != alone.panoptic[0]).sum() <= 2, index
        assert (prediction.semantic != alone.semantic).sum() <= 2, index
        torch.testing.assert_close(prediction.instances.scores, alone.instances.scores, atol=1e-5, rtol=1e-4)


def test_the_encoder_runs_each_image_to_its_depth_only(predictor):
    runs = []
    hooks = [layer.register_forward_hook(lambda module, args, out: runs.append(args[0].shape[0]))
             for layer in predictor.model.pixel_decoder.encoder.layers]
    try:
        predictor.predict(sample_images(), budget="layers_3")
    finally:
        for hook in hooks:
            hook.remove()
    assert sum(runs) == sum(PLANTED["layers_3"])


def test_fixed_depth_tensor_input_and_fp32_bf16(predictor, tiny_run):
    image = sample_images()[2]
    (fixed,) = predictor.predict([torch.from_numpy(image).permute(2, 0, 1)], depth=4)
    assert fixed.depth == 4 and fixed.budget is None
    bf16 = Predictor.from_run(tiny_run, precision="bf16")
    (low,) = bf16.predict([image], depth=4)
    assert low.depth == 4 and low.panoptic[0].shape == fixed.panoptic[0].shape
    assert low.instances.scores.dtype == torch.float32


def test_budget_choices_are_checked_with_what_exists(tiny_run, predictor, tmp_path, tiny_data_root):
    images = sample_images()[:1]
    with pytest.raises(BadInputError, match=r"unknown budget 'layers_4'.*: layers_3, layers_5"):
        predictor.predict(images, budget="layers_4")
    with pytest.raises(BadInputError, match=r"several budgets exist \(layers_3, layers_5\); name one"):
        predictor.predict(images)
    with pytest.raises(BadInputError, match="not both"):
        predictor.predict(images, budget="layers_3", depth=2)
    with pytest.raises(BadInputError, match=r"depth 9 must be an integer in 0..6"):
        predictor.predict(images, depth=9)
    with pytest.raises(BadInputError, match=r"uint8 RGB"):
        predictor.predict([np.zeros((4, 4), dtype=np.uint8)], depth=2)
    default = Predictor.from_run(tiny_run.model_copy(update={"serving": tiny_run.serving.model_copy(
        update={"budget": "layers_5"})}))
    assert default.predict(images)[0].budget == "layers_5"
    # A run with a parent and no gates: the message says which step makes them.
    bare = make_run(tiny_data_root, tmp_path)
    storage.delete(bare.storage.layout().gates, recursive=True)
    without = Predictor.from_run(bare)
    with pytest.raises(MissingStepError, match=r"no gates .*run step 3 \(ecom2f tune-gate\)"):
        without.predict(images)
    assert without.predict(images, depth=3)[0].depth == 3


def test_from_weights_takes_explicit_files(tiny_run):
    layout = tiny_run.storage.layout()
    buffer = io.BytesIO(storage.read_bytes(layout.parent_weights))
    predictor = Predictor.from_weights(tiny_run.model, torch.load(buffer, weights_only=True),
                                       {"mine": layout.gate("layers_3")}, test_size=(64, 64))
    assert predictor.budgets == ["mine"]
    assert [p.depth for p in predictor.predict(sample_images())] == PLANTED["layers_3"]
