"""Analytic FLOPs against torch's FlopCounterMode (which counts the MSDA op by its registered formula)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ecom2f.modeling.flops import encoder_gflops, model_gflops
from tests.modeling.tiny import tiny_config, tiny_model


def counted_gflops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("height, width, depth", [(64, 96, 6), (96, 64, 2), (70, 100, 3)])
def test_encoder_gflops_matches_the_counter(height, width, depth):
    model = tiny_model()
    pixels = torch.randn(2, 3, height, width)
    with torch.no_grad():
        _, _, inputs, _ = model._encode_inputs(pixels)
    counted = counted_gflops(lambda: model.pixel_decoder.encoder(inputs, torch.tensor([depth, depth])))
    analytic = encoder_gflops(model.config, height, width, depth, batch=2)
    assert abs(analytic - counted) <= 0.05 * counted


def test_encoder_gflops_is_linear_in_depth_and_checks_it():
    config = tiny_config()
    assert encoder_gflops(config, 64, 64, 0) == 0
    assert encoder_gflops(config, 64, 64, 6) == pytest.approx(3 * encoder_gflops(config, 64, 64, 2))
    with pytest.raises(ValueError, match="0..6"):
        encoder_gflops(config, 64, 64, 7)


@pytest.mark.parametrize("backbone, height, width, depth", [("resnet18", 64, 96, 4), ("resnet50", 70, 100, 6), ("swin_t", 64, 96, 2)])
def test_model_gflops_matches_the_counter(backbone, height, width, depth):
    model = tiny_model(backbone={"name": backbone})
    pixels = torch.randn(1, 3, height, width)
    counted = counted_gflops(lambda: model.forward_raw(pixels, depth=depth))
    analytic = model_gflops(model, height, width, depth)
    assert abs(analytic - counted) <= 0.05 * counted


def test_all_exits_gflops_matches_the_counter():
    from ecom2f.modeling.flops import all_exits_gflops

    model = tiny_model()
    pixels = torch.randn(2, 3, 64, 96)
    counted = counted_gflops(lambda: model.forward_all_exits(pixels, [1, 3, 4]))
    analytic = all_exits_gflops(model, 64, 96, [1, 3, 4], batch=2)
    assert abs(analytic - counted) <= 0.05 * counted
