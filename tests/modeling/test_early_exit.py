"""Per-image depths in one batch, and the all-exits pass."""

from __future__ import annotations

import pytest
import torch

from tests.modeling.tiny import tiny_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(1)
    return torch.randn(4, 3, 64, 96)


def test_mixed_depths_equal_each_image_alone(model, pixels):
    depths = [1, 6, 0, 3]
    with torch.no_grad():
        batch = model.forward_raw(pixels, depth=depths)
        assert batch["depths"].tolist() == depths
        for i, depth in enumerate(depths):
            alone = model.forward_raw(pixels[i : i + 1], depth=depth)
            assert len(alone["encoder_layer_out"]) == depth
            torch.testing.assert_close(batch["pred_logits"][i], alone["pred_logits"][0], atol=ATOL, rtol=0)
            torch.testing.assert_close(batch["pred_masks"][i], alone["pred_masks"][0], atol=ATOL, rtol=0)
            final = alone["encoder_layer_out"][-1] if depth else alone["encoder_input"]
            torch.testing.assert_close(batch["encoder_layer_out"][-1][i], final[0], atol=ATOL, rtol=0)


def test_depths_change_the_result(model, pixels):
    with torch.no_grad():
        shallow = model.forward_raw(pixels[:1], depth=2)["pred_logits"]
        deep = model.forward_raw(pixels[:1], depth=6)["pred_logits"]
    assert (shallow - deep).abs().max() > 1e-3


def test_each_layer_runs_only_on_images_that_need_it(model, pixels):
    seen = []
    hooks = [
        layer.register_forward_hook(lambda module, args, out, index=index: seen.append((index, args[0].shape[0])))
        for index, layer in enumerate(model.pixel_decoder.encoder.layers)
    ]
    try:
        with torch.no_grad():
            model.forward_raw(pixels, depth=[1, 6, 0, 3])
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [(0, 3), (1, 2), (2, 2), (3, 1), (4, 1), (5, 1)]


def test_all_exits_equal_separate_forwards(model, pixels):
    with torch.no_grad():
        everything = model.forward_all_exits(pixels[:2])
        assert everything["exits"] == [2, 3, 4, 5, 6]
        for k in everything["exits"]:
            single = model.forward_raw(pixels[:2], depth=k)
            out = everything["outputs"][k]
            torch.testing.assert_close(out["pred_logits"], single["pred_logits"], atol=ATOL, rtol=0)
            torch.testing.assert_close(out["pred_masks"], single["pred_masks"], atol=ATOL, rtol=0)
            for a, b in zip(out["aux_outputs"], single["aux_outputs"]):
                torch.testing.assert_close(a["pred_masks"], b["pred_masks"], atol=ATOL, rtol=0)
        torch.testing.assert_close(everything["gate_features"], single["gate_features"])


@pytest.mark.parametrize(
    "depth, message",
    [(7, "must lie in 0..6"), (-1, "must lie in 0..6"), ([1, 2], "2 entries for a batch of 4"), ("deep", "only named depth")],
)
def test_bad_depths_are_rejected(model, pixels, depth, message):
    with pytest.raises(ValueError, match=message):
        model.forward_raw(pixels, depth=depth)


def test_bad_exits_are_rejected(model, pixels):
    with pytest.raises(ValueError, match="strictly increasing"):
        model.forward_all_exits(pixels[:1], exits=[3, 2])


def test_gradients_reach_only_executed_layers(model, pixels):
    model.zero_grad()
    out = model.forward_raw(pixels[:2], depth=[2, 3])
    (out["pred_logits"].sum() + out["pred_masks"].sum()).backward()
    layers = model.pixel_decoder.encoder.layers
    assert layers[2].linear1.weight.grad is not None and layers[2].linear1.weight.grad.abs().sum() > 0
    assert layers[3].linear1.weight.grad is None
    model.zero_grad()
