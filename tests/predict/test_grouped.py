"""``predict_grouped``: a batch of several sizes and depths gives each image what it gets alone, and
runs each encoder layer only for the images whose depth reaches it, without per-layer gathers."""

from __future__ import annotations

import itertools

import pytest
import torch

from ecom2f.modeling.deformable_encoder import DeformableEncoder
from ecom2f.modeling.predict import PHASES, predict_grouped, size_groups
from tests.modeling.tiny import tiny_model

SIZES = [(50, 70), (64, 96), (60, 90), (40, 40), (64, 90)]  # padded: 64x96 (images 0, 1, 2, 4), 64x64 (3)
DEPTHS = [2, 5, 2, 6, 1]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in SIZES]


def test_size_groups_pad_each_image_as_alone():
    assert size_groups(SIZES, 32) == {(64, 96): [0, 1, 2, 4], (64, 64): [3]}
    assert size_groups([(33, 1)], 1) == {(33, 1): [0]}


def _assert_same(result: dict, alone: dict, where: str) -> None:
    assert result["depth"] == alone["depth"], where
    torch.testing.assert_close(result["sem_seg"], alone["sem_seg"], atol=1e-5, rtol=0, msg=where)
    ids, segments = result["panoptic_seg"]
    assert (ids != alone["panoptic_seg"][0]).sum() <= 2, where
    assert [s["category_id"] for s in segments] == [s["category_id"] for s in alone["panoptic_seg"][1]], where
    torch.testing.assert_close(result["instances"].scores, alone["instances"].scores, atol=1e-5, rtol=1e-4)
    assert torch.equal(result["instances"].classes, alone["instances"].classes), where


def test_a_mixed_batch_equals_each_image_alone(model, images):
    """To float rounding, not bit for bit: the backbone's convolutions choose their kernels by batch size."""
    grouped = predict_grouped(model, images, depth=DEPTHS, object_mask_threshold=0.0)
    for index, (image, depth, result) in enumerate(zip(images, DEPTHS, grouped)):
        alone = model.predict([image], depth=depth, object_mask_threshold=0.0)[0]
        _assert_same(result, alone, f"image {index}")


def test_the_gate_chooses_in_a_batch_what_it_chooses_alone(model, images):
    with torch.no_grad():
        model.gate.head.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
    try:
        alone = [model.predict([image], depth="gate", tasks=["panoptic"])[0]["depth"] for image in images]
        grouped = [r["depth"] for r in predict_grouped(model, images, depth="gate", tasks=["panoptic"])]
    finally:
        with torch.no_grad():
            model.gate.head.weight.zero_()
    assert grouped == alone


def _layer_batches(model, run) -> list[int]:
    """The batch size of every encoder-layer call made by ``run()``."""
    seen = []
    hooks = [layer.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
             for layer in model.pixel_decoder.encoder.layers]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_each_image_pays_for_its_depth_and_no_layer_gathers(model, images, monkeypatch):
    batches = _layer_batches(model, lambda: predict_grouped(model, images, depth=DEPTHS, tasks=["panoptic"]))
    assert sum(batches) == sum(DEPTHS)  # image-layers run: exactly the depths, nothing more
    # Groups: size 64x96 -> depth 1 [img 4], 2 [imgs 0, 2], 5 [img 1]; size 64x64 -> depth 6 [img 3]:
    # (layer calls x batch) = 1 x 1, 2 x 2, 5 x 1, 6 x 1.
    assert sorted(batches) == sorted([1] * 1 + [2] * 2 + [1] * 5 + [1] * 6)
    # Within a group every layer runs on the whole group: the encoder never selects rows.
    calls = []
    real_forward = DeformableEncoder.forward

    def recording(self, inputs, depths, keep_layer_outputs=False):
        calls.append(depths)
        return real_forward(self, inputs, depths, keep_layer_outputs)

    monkeypatch.setattr(DeformableEncoder, "forward", recording)
    predict_grouped(model, images, depth=DEPTHS, tasks=["panoptic"])
    assert all(isinstance(depth, int) for depth in calls) and sorted(calls) == [1, 2, 5, 6]


def test_phases_share_each_lap_among_its_images(model, images):
    """A clock that ticks 1 per reading: each lap is 1 second, divided among the images it ran."""
    ticks = itertools.count()
    results = predict_grouped(model, images, depth=DEPTHS, tasks=["panoptic"], clock=lambda: float(next(ticks)))
    groups = {(64, 96): [0, 1, 2, 4], (64, 64): [3]}
    for index, result in enumerate(results):
        assert set(result["phases"]) == set(PHASES)
        group = next(rows for rows in groups.values() if index in rows)
        peers = sum(1 for j in group if DEPTHS[j] == DEPTHS[index])
        assert result["phases"]["trunk"] == pytest.approx(1 / len(group))
        for phase in ("encoder", "decoder", "post"):
            assert result["phases"][phase] == pytest.approx(1 / peers)
        assert result["seconds"] == pytest.approx(sum(result["phases"].values()))
    # 2 size groups x 1 trunk lap + 4 depth groups x 3 laps, every second accounted for once.
    assert sum(r["seconds"] for r in results) == pytest.approx(2 + 4 * 3)


def test_bf16_runs_the_network_under_autocast_and_post_processes_in_fp32(model, images):
    contexts = []

    def autocast():
        contexts.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    results = predict_grouped(model, images[:2], depth=[3, 3], tasks=["semantic", "instance"], autocast=autocast)
    assert len(contexts) == 3  # the trunk, the encoder, the decoder of the one group
    assert all(r["sem_seg"].dtype == torch.float32 and r["instances"].scores.dtype == torch.float32 for r in results)
