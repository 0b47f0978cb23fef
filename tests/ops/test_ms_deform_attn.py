"""The deformable-attention op on the CPU: exactness, autograd, registration, errors."""

from __future__ import annotations

import pytest
import torch

import ecom2f.ops as ops
from tests.ops.inputs import level_layout, make_inputs, random_configs
from tests.ops.oracle import ms_deform_attn_oracle

CONFIGS = random_configs(14)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def kernel(*args):
    return torch.ops.ecom2f.ms_deform_attn(*args)


def test_extension_is_built_with_a_cpu_kernel():
    assert ops.extension_loaded(), "ecom2f._C did not import: the op was not compiled"
    assert ops.has_kernel("cpu")


def test_oracle_agrees_with_grid_sample_reference():
    # The two references are written independently; agreeing makes both trustworthy.
    args = make_inputs(2, 9, 3, 5, 3, [(4, 6), (3, 2)], seed=3)
    assert relative_error(ops.ms_deform_attn_reference(*args), ms_deform_attn_oracle(*args)) < 1e-12


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"cfg{i}" for i in range(len(CONFIGS))])
def test_forward_and_gradients_match_oracle(config, dtype, tolerance):
    value, shapes, starts, locations, weights = make_inputs(**config, dtype=dtype, seed=7, requires_grad=True)
    out = kernel(value, shapes, starts, locations, weights)
    assert out.dtype == dtype and out.shape == (config["n"], config["q"], config["heads"] * config["head_dim"])

    inputs64 = [t.detach().double().requires_grad_() for t in (value, locations, weights)]
    expected = ms_deform_attn_oracle(inputs64[0], shapes, starts, inputs64[1], inputs64[2])
    assert relative_error(out, expected) < tolerance

    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out.to(dtype))
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out)
    for name, got, want in zip(("value", "sampling_locations", "attention_weights"), grads, expected_grads):
        assert relative_error(got, want) < tolerance, name


def test_points_outside_the_map_contribute_nothing():
    value, shapes, starts, locations, weights = make_inputs(1, 4, 2, 3, 2, [(5, 5)], seed=1, requires_grad=True)
    with torch.no_grad():
        locations[..., 0] = torch.tensor([-0.11, 1.11]).repeat(4, 2, 1, 1)  # more than a pixel outside
    out = kernel(value, shapes, starts, locations, weights)
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out.sum(), (value, locations, weights))
    for grad in grads:
        assert torch.equal(grad, torch.zeros_like(grad))


def test_exact_values_on_a_crafted_map():
    # One 2x2 map, value[token] = token index; the centre of the map averages all four
    # pixels (1.5), and a point on pixel (row 1, col 0)'s centre reads exactly 2.
    shapes, starts, _ = level_layout([(2, 2)])
    value = torch.arange(4, dtype=torch.float64).view(1, 4, 1, 1)
    locations = torch.tensor([0.5, 0.5, 0.25, 0.75], dtype=torch.float64).view(1, 1, 1, 1, 2, 2)
    weights = torch.tensor([1.0, 10.0], dtype=torch.float64).view(1, 1, 1, 1, 2)
    out = kernel(value, shapes, starts, locations, weights)
    assert out.item() == pytest.approx(1.5 + 10 * 2.0, abs=1e-12)


@pytest.mark.parametrize("n, q", [(0, 5), (2, 0), (5, 3)])
def test_empty_and_odd_batch_sizes(n, q):
    value, shapes, starts, locations, weights = make_inputs(n, q, 2, 3, 2, [(3, 4)], seed=2, requires_grad=True)
    out = ops.ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.shape == (n, q, 6)
    expected = ms_deform_attn_oracle(value, shapes, starts, locations, weights)
    assert torch.allclose(out, expected, atol=1e-12)
    out.sum().backward()
    assert value.grad.shape == value.shape and locations.grad.shape == locations.shape


def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = make_inputs(2, 6, 3, 4, 2, [(4, 5), (2, 3)], seed=5)
    value_t = value.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    locations_t = locations.transpose(0, 1).contiguous().transpose(0, 1)
    weights_t = torch.stack([weights, -weights], dim=-1)[..., 0]  # strided view with the same values
    assert not value_t.is_contiguous() and not locations_t.is_contiguous() and not weights_t.is_contiguous()
    out = ops.ms_deform_attn(value_t, shapes, starts, locations_t, weights_t)
    assert torch.allclose(out, ms_deform_attn_oracle(value, shapes, starts, locations, weights), atol=1e-12)


def test_bfloat16_accumulates_in_float32():
    value, shapes, starts, locations, weights = make_inputs(2, 16, 4, 32, 4, [(16, 16), (8, 8)], seed=9)
    out = kernel(value.bfloat16(), shapes, starts, locations.bfloat16(), weights.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_oracle(value.bfloat16(), shapes, starts, locations.bfloat16(), weights.bfloat16())
    assert relative_error(out, expected) < 1e-2


def test_gradcheck_fp64():
    args = make_inputs(2, 3, 2, 3, 2, [(3, 4), (2, 2)], seed=4, requires_grad=True, outside=0.1)
    value, shapes, starts, locations, weights = args
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ops.ms_deform_attn(v, shapes, starts, loc, w), (value, locations, weights),
        eps=1e-6, atol=1e-7,
    )


def test_opcheck():
    args = make_inputs(2, 5, 2, 3, 2, [(3, 4), (2, 2)], seed=6, requires_grad=True, dtype=torch.float32)
    torch.library.opcheck(torch.ops.ecom2f.ms_deform_attn.default, args)


class _TinyDeformableAttention(torch.nn.Module):
    def __init__(self, dim=8, heads=2, levels=2, points=2):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.value_proj = torch.nn.Linear(dim, dim)
        self.offsets = torch.nn.Linear(dim, heads * levels * points * 2)
        self.weights = torch.nn.Linear(dim, heads * levels * points)

    def forward(self, tokens, reference, shapes, starts):
        n, s, c = tokens.shape
        value = self.value_proj(tokens).view(n, s, self.heads, c // self.heads)
        offsets = self.offsets(tokens).view(n, s, self.heads, self.levels, self.points, 2)
        locations = reference[:, :, None, None, None, :] + 0.05 * offsets.tanh()
        weights = self.weights(tokens).view(n, s, self.heads, self.levels * self.points).softmax(-1)
        weights = weights.view(n, s, self.heads, self.levels, self.points)
        return ops.ms_deform_attn(value, shapes, starts, locations, weights)


def test_torch_compile_fullgraph_traces_the_op():
    torch.manual_seed(0)
    module = _TinyDeformableAttention()
    shapes, starts, s = level_layout([(4, 4), (2, 2)])
    tokens = torch.randn(2, s, 8)
    reference = torch.rand(2, s, 2)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    eager_out = module(tokens, reference, shapes, starts)
    compiled_out = compiled(tokens, reference, shapes, starts)
    assert torch.allclose(eager_out, compiled_out, atol=1e-6)
    compiled_out.sum().backward()
    assert module.offsets.weight.grad is not None and module.offsets.weight.grad.abs().sum() > 0


def test_flop_counter_counts_the_op():
    from torch.utils.flop_counter import FlopCounterMode

    value, shapes, starts, locations, weights = make_inputs(2, 10, 4, 8, 3, [(4, 4), (2, 2)], requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = ops.ms_deform_attn(value, shapes, starts, locations, weights)
        out.sum().backward()
    counts = counter.get_flop_counts()["Global"]
    forward = 10 * 2 * 10 * 4 * 2 * 3 * 8
    assert counts[torch.ops.ecom2f.ms_deform_attn] == forward == ops.forward_flops(value.shape, locations.shape)
    assert counts[torch.ops.ecom2f.ms_deform_attn_backward] == 2 * forward


def test_backward_allocates_only_its_outputs():
    # A kernel that materialised [N, Q, H, L, P, D] would allocate ~63 MB here; the
    # gradients themselves are ~1.2 MB.
    value, shapes, starts, locations, weights = make_inputs(
        2, 1024, 8, 32, 4, [(32, 32), (16, 16)], dtype=torch.float32, requires_grad=True
    )
    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    grad_out = torch.ones_like(out)
    outputs_bytes = sum(t.numel() * t.element_size() for t in (value, locations, weights))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.ops.ecom2f.ms_deform_attn_backward(grad_out, value, shapes, starts, locations, weights)
    (event,) = [e for e in prof.events() if e.name == "ecom2f::ms_deform_attn_backward"]
    allocated = event.cpu_memory_usage  # bytes allocated inside the op, its children included
    assert 0 < allocated <= 1.1 * outputs_bytes, (allocated, outputs_bytes)
