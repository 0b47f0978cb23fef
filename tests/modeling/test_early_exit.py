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


def _assert_same_prediction(a: dict, b: dict) -> None:
    assert torch.equal(a["pred_logits"], b["pred_logits"])
    assert torch.equal(a["pred_masks"], b["pred_masks"])


def test_forward_exits_equal_separate_forwards_exactly(model, pixels):
    with torch.no_grad():
        shared = model.forward_exits(pixels[:2], [0, 2, 5], aux=True)
        assert list(shared) == [0, 2, 5]
        for k, out in shared.items():
            single = model.forward_raw(pixels[:2], depth=k)
            _assert_same_prediction(out, single)
            assert torch.equal(out["mask_features"], single["mask_features"])
            assert len(out["aux_outputs"]) == len(single["aux_outputs"]) == model.decoder.num_layers
            for a, b in zip(out["aux_outputs"], single["aux_outputs"]):
                _assert_same_prediction(a, b)
        assert "aux_outputs" not in model.forward_exits(pixels[:2], [3], aux=False)[3]


def test_forward_exits_gradients_are_the_sum_of_the_separate_passes(model, pixels):
    """Autograd runs through the shared trunk: one backward of all exits' losses gives the
    gradient of the separate passes' summed losses (the trunk's parts from each exit)."""
    exits, batch = [1, 3], pixels[:2]

    def loss(out):
        aux = sum(a["pred_masks"].square().mean() for a in out["aux_outputs"])
        return out["pred_logits"].square().mean() + out["pred_masks"].square().mean() + aux

    def grads() -> dict:
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    shared = model.forward_exits(batch, exits)
    sum(loss(shared[k]) * (k + 1) for k in exits).backward()
    together = grads()
    model.zero_grad()
    for k in exits:
        (loss(model.forward_raw(batch, depth=k)) * (k + 1)).backward()
    separate = grads()
    model.zero_grad()
    assert set(together) == set(separate)
    for name, a in together.items():
        b = separate[name]
        # Summation order differs (one backward through the trunk vs two): relative to the largest entry.
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), name
    prefix = "pixel_decoder.transformer.encoder.layers"
    assert together[f"{prefix}.2.linear1.weight"].abs().sum() > 0  # exit 3 reached layer 2
    assert f"{prefix}.3.linear1.weight" not in together  # no exit runs layer 3
    assert together["backbone.conv1.weight"].abs().sum() > 0


def test_all_exits_equal_separate_forwards(model, pixels):
    with torch.no_grad():
        everything = model.forward_all_exits(pixels[:2])
        assert everything["exits"] == [2, 3, 4, 5, 6]
        for k in everything["exits"]:
            single = model.forward_raw(pixels[:2], depth=k)
            out = everything["outputs"][k]
            _assert_same_prediction(out, single)
            assert "aux_outputs" not in out  # step 2 reads the final prediction only
            torch.testing.assert_close(everything["encoder_states"][k], single["encoder_layer_out"][-1], atol=0, rtol=0)
        torch.testing.assert_close(everything["gate_features"], single["gate_features"])
        coarsest = model.pixel_decoder.project(model.backbone(pixels[:2]))[0]
        torch.testing.assert_close(everything["coarsest"], coarsest)


@pytest.mark.parametrize(
    "depth, message",
    [(7, "must lie in 0..6"), (-1, "must lie in 0..6"), ([1, 2], "2 entries for a batch of 4"), ("deep", "only named depth")],
)
def test_bad_depths_are_rejected(model, pixels, depth, message):
    with pytest.raises(ValueError, match=message):
        model.forward_raw(pixels, depth=depth)


@pytest.mark.parametrize("exits", [[3, 2], [2, 2], [], [1, 7], [-1, 2], [1.0, 2]])
def test_bad_exits_are_rejected(model, pixels, exits):
    with pytest.raises(ValueError, match="strictly increasing"):
        model.forward_all_exits(pixels[:1], exits=exits)
    with pytest.raises(ValueError, match="strictly increasing"):
        model.forward_exits(pixels[:1], exits)


def test_gradients_reach_only_executed_layers(model, pixels):
    model.zero_grad()
    out = model.forward_raw(pixels[:2], depth=[2, 3])
    (out["pred_logits"].sum() + out["pred_masks"].sum()).backward()
    layers = model.pixel_decoder.encoder.layers
    assert layers[2].linear1.weight.grad is not None and layers[2].linear1.weight.grad.abs().sum() > 0
    assert layers[3].linear1.weight.grad is None
    model.zero_grad()
