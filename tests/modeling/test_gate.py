"""The ECO-M2F gate: pooling, depth choice, and gated prediction."""

from __future__ import annotations

import pytest
import torch

from ecom2f.config.model import GateConfig
from ecom2f.modeling.gate import Gate, pool_gate_features, valid_cells
from ecom2f.modeling.preprocessing import normalize_and_pad
from tests.modeling.tiny import tiny_model


def test_pooling_values_on_a_crafted_map():
    x = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).view(2, 1, 2, 4)  # image 0: 0..7, image 1: 8..15
    assert pool_gate_features(x, "mean").tolist() == [[3.5], [11.5]]
    assert pool_gate_features(x, "mean_max").tolist() == [[3.5, 7.0], [11.5, 15.0]]
    # 2x2 grid: cells (rows 0/1) x (cols 0-1 / 2-3)
    assert pool_gate_features(x, "grid", 2).tolist() == [[0.5, 2.5, 4.5, 6.5], [8.5, 10.5, 12.5, 14.5]]
    with pytest.raises(ValueError, match="unknown gate pooling 'median'"):
        pool_gate_features(x, "median")


def test_default_gate_is_one_linear_over_the_mean():
    gate = Gate(256, GateConfig())
    assert [name for name, _ in gate.named_parameters()] == ["head.weight", "head.bias"]
    assert gate.head.weight.shape == (5, 256)
    logits = torch.tensor([[0.0, 0, 5, 0, 0], [9.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 1]])
    assert gate.depths(logits).tolist() == [4, 2, 6]


def test_configurable_mlp_gate_shapes():
    gate = Gate(64, GateConfig(exits=[1, 3], pooling="grid", grid_size=3, hidden_layers=2, hidden_dim=32, dropout=0.1))
    assert gate.hidden[0].in_features == 64 * 9 and gate.head.out_features == 2
    assert gate(torch.randn(4, 64 * 9)).shape == (4, 2)


def test_gate_reads_the_coarsest_input_tokens_before_any_layer():
    model = tiny_model()
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        raw = model.forward_raw(pixels, depth=0)
        features = model.backbone(pixels)
        coarsest = model.pixel_decoder.project(features)[0]
    tokens = raw["encoder_input"][:, : coarsest.shape[-2] * coarsest.shape[-1]]
    torch.testing.assert_close(raw["gate_features"], tokens.mean(1))
    torch.testing.assert_close(raw["gate_logits"], model.gate.head(tokens.mean(1)))


def test_predict_with_gate_uses_each_images_gate_depth():
    model = tiny_model()
    images = [torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8) for _ in range(2)]
    with torch.no_grad():
        # Make the choice depend on the image: exit 2 for the first, exit 6 for the second.
        model.gate.head.weight.zero_()
        model.gate.head.bias.zero_()
    with torch.no_grad():
        features = model.forward_raw(_pixels(model, images), depth=0)["gate_features"]
    direction = features[1] - features[0]
    with torch.no_grad():
        model.gate.head.weight[0] = -direction
        model.gate.head.weight[4] = direction
        model.gate.head.bias[0] = float(direction @ (features[0] + features[1]) / 2)
        model.gate.head.bias[4] = -float(direction @ (features[0] + features[1]) / 2)
    gated = model.predict(images, depth="gate", tasks=["semantic"])
    assert [r["depth"] for r in gated] == [2, 6]
    fixed = model.predict(images, depth=[2, 6], tasks=["semantic"])
    for a, b in zip(gated, fixed):
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"])


def _pixels(model, images):
    from ecom2f.modeling.preprocessing import normalize_and_pad

    return normalize_and_pad(images, model.config.pixel_mean, model.config.pixel_std, 32)[0]


def test_gate_features_ignore_the_batch_padding():
    # A small image batched with a large one is padded; its gate pools only its own cells of
    # the coarsest map (as step 2 stores the features), never the cells of pure padding.
    model = tiny_model(gate={"pooling": "grid", "grid_size": 2})
    small = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    large = torch.randint(0, 256, (3, 128, 192), dtype=torch.uint8)
    with torch.no_grad():
        pixels, sizes = normalize_and_pad([small, large], model.config.pixel_mean, model.config.pixel_std, 32)
        batched = model.forward_raw(pixels, depth=0, image_sizes=sizes)["gate_features"]
        unmasked = model.forward_raw(pixels, depth=0)["gate_features"]
        coarsest = model.pixel_decoder.project(model.backbone(pixels))[0]  # [2, C, 4, 6]
    assert valid_cells(sizes, (128, 192), (4, 6)) == [(2, 2), (4, 6)]
    torch.testing.assert_close(batched[0], pool_gate_features(coarsest[:1, :, :2, :2], "grid", 2)[0])
    torch.testing.assert_close(batched[1], unmasked[1])  # the largest image has no padding
    assert not torch.allclose(unmasked[0], batched[0])
    assert valid_cells([(100, 190)], (128, 192), (4, 6)) == [(4, 6)]  # partly covered cells count
