"""``predict``: batching, depths, tasks, overrides and output sizes."""

from __future__ import annotations

import pytest
import torch

from tests.modeling.tiny import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8, generator=generator),
    ]


def test_batched_prediction_equals_one_image_at_a_time(model, images):
    # Both pad to 64x96 alone and together. (As in Mask2Former, padding is not masked, so an
    # image padded to a different batch size gets slightly different results.)
    batched = model.predict(images, depth=[2, 5], object_mask_threshold=0.0)
    for image, depth, result in zip(images, [2, 5], batched):
        alone = model.predict([image], depth=depth, object_mask_threshold=0.0)[0]
        assert result["depth"] == depth
        assert result["sem_seg"].shape == (133, *image.shape[1:])
        torch.testing.assert_close(result["sem_seg"], alone["sem_seg"], atol=1e-5, rtol=0)
        ids, segments = result["panoptic_seg"]
        assert ids.shape == image.shape[1:] and len(segments) > 0
        assert (ids != alone["panoptic_seg"][0]).sum() <= 2


def test_tasks_sizes_and_options(model, images):
    result = model.predict(images[0], tasks=["instance"], output_sizes=[(25, 35)], detections_per_image=5)[0]
    assert set(result) == {"depth", "instances"} and result["depth"] == 6
    assert result["instances"].masks.shape[1:] == (25, 35) and len(result["instances"].scores) <= 5
    everything = model.predict(images[0], tasks=["instance"], panoptic_on=False, detections_per_image=5)[0]
    assert len(everything["instances"].scores) == 5  # stuff classes kept without panoptic filtering
    with pytest.raises(TypeError, match="unknown predict options"):
        model.predict(images, overlap=0.5)
    with pytest.raises(ValueError, match="unknown tasks"):
        model.predict(images, tasks=["depth"])


def test_predict_restores_training_mode(model, images):
    model.train()
    try:
        model.predict(images[:1], tasks=["semantic"])
        assert model.training
    finally:
        model.eval()
