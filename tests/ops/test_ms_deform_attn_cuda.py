"""The CUDA kernels: how they were built (runs on any machine) and what they compute (GPU only)."""

from __future__ import annotations

import pytest
import torch

import ecom2f.ops as ops
from tests.ops.inputs import make_inputs, random_configs
from tests.ops.oracle import ms_deform_attn_oracle
from tests.ops.test_ms_deform_attn import relative_error
from tests.ops.toolchain import build_with_cuda


@build_with_cuda
def test_cuda_kernel_is_registered():
    assert ops.has_kernel("cuda")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("ecom2f::ms_deform_attn_backward", "CUDA")


CONFIGS = random_configs(10, seed=99)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"cfg{i}" for i in range(len(CONFIGS))])
def test_cuda_matches_oracle(config, dtype, tolerance):
    cpu = make_inputs(**config, dtype=dtype, seed=3)
    value, shapes, starts, locations, weights = [t.cuda() for t in cpu]
    for t in (value, locations, weights):
        t.requires_grad_()
    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    inputs64 = [t.double().requires_grad_() for t in (cpu[0], cpu[3], cpu[4])]
    expected = ms_deform_attn_oracle(inputs64[0], cpu[1], cpu[2], inputs64[1], inputs64[2])
    assert relative_error(out.cpu(), expected) < tolerance
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out.to(dtype).cuda())
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out)
    for name, got, want in zip(("value", "sampling_locations", "attention_weights"), grads, expected_grads):
        assert relative_error(got.cpu(), want) < tolerance, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
def test_cuda_half_precision_accumulates_in_fp32(dtype, tolerance, cuda_kernel):
    cpu = make_inputs(2, 300, 8, 32, 4, [(32, 32), (16, 16), (8, 8)], dtype=torch.float64, seed=5)
    rounded = [t.to(dtype) if t.is_floating_point() else t for t in cpu]
    value, shapes, starts, locations, weights = [t.cuda() for t in rounded]
    for t in (value, locations, weights):
        t.requires_grad_()
    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.dtype == dtype
    inputs64 = [t.double().requires_grad_() for t in (rounded[0], rounded[3], rounded[4])]
    expected = ms_deform_attn_oracle(inputs64[0], cpu[1], cpu[2], inputs64[1], inputs64[2])
    assert relative_error(out.float().cpu(), expected) < tolerance
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dtype)
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out.cuda())
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double())
    for name, got, want in zip(("value", "sampling_locations", "attention_weights"), grads, expected_grads):
        assert got.dtype == dtype
        assert relative_error(got.float().cpu(), want) < 4 * tolerance, name


@pytest.mark.gpu
def test_cuda_wrapper_edge_cases_and_errors():
    value, shapes, starts, locations, weights = [t.cuda() for t in make_inputs(0, 4, 2, 5, 3, [(3, 3)])]
    assert ops.ms_deform_attn(value, shapes, starts, locations, weights).shape == (0, 4, 10)
    value, shapes, starts, locations, weights = [t.cuda() for t in make_inputs(2, 0, 2, 5, 3, [(3, 3)])]
    assert ops.ms_deform_attn(value, shapes, starts, locations, weights).shape == (2, 0, 10)
    with pytest.raises(ValueError, match="one device"):
        ops.ms_deform_attn(value, shapes.cpu(), starts, locations, weights)


@pytest.mark.gpu
def test_cuda_backward_memory_is_linear_in_inputs(cuda_kernel):
    value, shapes, starts, locations, weights = [
        t.cuda() for t in make_inputs(2, 5376, 8, 32, 4, [(64, 64), (32, 32), (16, 16)], dtype=torch.float32)
    ]
    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    grad_out = torch.ones_like(out)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    torch.ops.ecom2f.ms_deform_attn_backward(grad_out, value, shapes, starts, locations, weights)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    gradients = sum(t.numel() * t.element_size() for t in (value, locations, weights))
    assert extra <= 1.2 * gradients + (2 << 20), (extra, gradients)
