"""``ecom2f.ops.ms_deform_attn`` under torch.autocast: half-precision value, fp32 geometry."""

from __future__ import annotations

import pytest
import torch

import ecom2f.ops as ops
from tests.ops.inputs import level_layout, make_inputs
from tests.ops.oracle import ms_deform_attn_oracle
from tests.ops.recorder import MsdaInputRecorder

FP32 = torch.float32


def small_inputs(dtype, device="cpu"):
    value, shapes, starts, locations, weights = make_inputs(2, 6, 2, 4, 2, [(3, 5), (2, 2)], seed=4, device=device)
    return value.to(dtype), shapes, starts, locations.to(dtype), weights.to(dtype)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["fp32-in", "bf16-in"])
def test_autocast_gives_the_op_half_value_and_fp32_geometry(autocast_dtype, input_dtype, device):
    value, shapes, starts, locations, weights = small_inputs(input_dtype, device)
    for t in (value, locations, weights):
        t.requires_grad_()
    with MsdaInputRecorder() as recorder, torch.autocast(device, autocast_dtype):
        out = ops.ms_deform_attn(value, shapes, starts, locations, weights)
    assert recorder.dtypes == [(autocast_dtype, FP32, FP32)]
    assert out.dtype == autocast_dtype
    # The casts are differentiable: each input gets its gradient in its own dtype.
    grads = torch.autograd.grad(out.float().sum(), (value, locations, weights))
    assert [g.dtype for g in grads] == [input_dtype] * 3
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_nothing_is_cast_outside_autocast(dtype):
    value, shapes, starts, locations, weights = small_inputs(dtype)
    with MsdaInputRecorder() as recorder:
        out = ops.ms_deform_attn(value, shapes, starts, locations, weights)
    assert recorder.dtypes == [(dtype, dtype, dtype)] and out.dtype == dtype


def test_mixed_inputs_pass_unchanged_outside_autocast():
    value, shapes, starts, locations, weights = small_inputs(FP32)
    with MsdaInputRecorder() as recorder:
        ops.ms_deform_attn(value.half(), shapes, starts, locations, weights)
    assert recorder.dtypes == [(torch.float16, FP32, FP32)]


def test_float64_is_left_alone_under_autocast():
    # torch's autocast never casts float64; neither does the op.
    value, shapes, starts, locations, weights = small_inputs(torch.float64)
    with MsdaInputRecorder() as recorder, torch.autocast("cpu", torch.bfloat16):
        out = ops.ms_deform_attn(value, shapes, starts, locations, weights)
    assert recorder.dtypes == [(torch.float64,) * 3] and out.dtype == torch.float64


def test_fp32_locations_beat_bf16_locations_on_a_crafted_map():
    # One 167-wide level (the width of the 1/8 level of a 1333-wide image) whose columns
    # alternate 0 and 1, so the bilinear sample at pixel x is its distance to the nearest
    # even column: an error of dx pixels in the location is an error of dx in the output.
    # bf16 rounds x in [0.5, 1) to a multiple of 2^-8, up to 167 / 512 = 0.33 px off;
    # with fp32 locations only the final bf16 rounding of the output (half an ulp, 2^-9
    # below 1) and the fp32 pixel arithmetic (~1e-5) are left.
    height, width = 4, 167
    shapes, starts, s = level_layout([(height, width)])
    columns = torch.arange(s) % width
    value = (columns % 2).double().view(1, s, 1, 1)  # 0/1, exact in bf16
    queries = 400
    x = torch.linspace(0.03, 0.97, queries, dtype=torch.float64)
    locations = torch.stack([x, torch.full_like(x, 0.5)], -1).view(1, queries, 1, 1, 1, 2).float()
    weights = torch.ones(1, queries, 1, 1, 1)
    expected = ms_deform_attn_oracle(value, shapes, starts, locations, weights)  # float64, exact locations

    with torch.autocast("cpu", torch.bfloat16):
        mixed = ops.ms_deform_attn(value.float(), shapes, starts, locations, weights)
    all_bf16 = ops.ms_deform_attn(value.bfloat16(), shapes, starts, locations.bfloat16(), weights.bfloat16())
    assert mixed.dtype == all_bf16.dtype == torch.bfloat16

    mixed_error = (mixed.double() - expected).abs()
    bf16_error = (all_bf16.double() - expected).abs()
    assert mixed_error.max() <= 2**-8
    assert bf16_error.max() > 0.15  # a good part of a pixel
    assert bf16_error.mean() > 20 * mixed_error.mean()
