"""The op with float16/bfloat16 values and float32 sampling locations / attention weights."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ecom2f.ops as ops
from tests.ops.inputs import level_layout, make_inputs, random_configs
from tests.ops.oracle import ms_deform_attn_oracle
from tests.ops.recorder import MsdaInputRecorder
from tests.ops.test_ms_deform_attn import _TinyDeformableAttention, relative_error

HALF = (torch.bfloat16, torch.float16)
# Tolerances relative to the largest magnitude of the expected tensor. The oracle gets the
# same rounded inputs (value in its half dtype, locations and weights in fp32), so what is
# left is fp32 accumulation (~1e-6) plus, for the output and grad_value, ONE final rounding
# to the value dtype: at most the unit roundoff of the element, 2^-8 (bf16, 7 stored
# mantissa bits) / 2^-11 (fp16, 10 bits), so 2^-7 / 2^-10 leave a factor 2 of margin.
# Rounding the locations to bf16 instead gives 1e-2 to 4e-2 on these configs.
HALF_TOLERANCE = {torch.bfloat16: 2**-7, torch.float16: 2**-10}
# grad_locations / grad_weights are fp32 end to end: the fp32 tolerance of the fp32 tests.
FP32_TOLERANCE = 1e-5
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
CONFIGS = random_configs(6, seed=2024)


def mixed_inputs(config, dtype, device="cpu", seed=0, requires_grad=True):
    """value in ``dtype``, locations and weights in fp32 (the autocast layout)."""
    value, shapes, starts, locations, weights = make_inputs(**config, dtype=torch.float64, seed=seed)
    tensors = [value.to(dtype), locations.float(), weights.float()]
    value, locations, weights = [t.to(device).requires_grad_(requires_grad) for t in tensors]
    return value, shapes.to(device), starts.to(device), locations, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"cfg{i}" for i in range(len(CONFIGS))])
def test_forward_and_gradients_match_oracle(config, dtype, device):
    value, shapes, starts, locations, weights = mixed_inputs(config, dtype, device, seed=21)
    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.dtype == dtype and out.shape == (config["n"], config["q"], config["heads"] * config["head_dim"])

    inputs64 = [t.detach().cpu().double().requires_grad_() for t in (value, locations, weights)]
    expected = ms_deform_attn_oracle(inputs64[0], shapes.cpu(), starts.cpu(), inputs64[1], inputs64[2])
    assert relative_error(out.cpu(), expected) < HALF_TOLERANCE[dtype]

    # grad_output arrives in the output's dtype; the oracle gets the same rounded values.
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).to(dtype)
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out.to(device))
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double())
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    tolerances = (HALF_TOLERANCE[dtype], FP32_TOLERANCE, FP32_TOLERANCE)
    names = ("value", "sampling_locations", "attention_weights")
    for name, got, want, tolerance in zip(names, grads, expected_grads, tolerances):
        assert relative_error(got.cpu(), want) < tolerance, name


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_reference_fallback_accepts_the_mixed_case(dtype):
    config = dict(n=2, q=7, heads=3, head_dim=5, points=2, level_shapes=[(4, 6), (3, 2)])
    value, shapes, starts, locations, weights = mixed_inputs(config, dtype, seed=3)
    out = ops.ms_deform_attn_reference(value, shapes, starts, locations, weights)
    assert out.dtype == dtype
    expected = ms_deform_attn_oracle(value, shapes, starts, locations, weights)
    assert relative_error(out, expected) < HALF_TOLERANCE[dtype]
    grads = torch.autograd.grad(out.float().sum(), (value, locations, weights))
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    # The reference computes in fp32, so its location gradients are not rounded to dtype.
    expected_grads = torch.autograd.grad(
        ms_deform_attn_oracle(value, shapes, starts, locations, weights).sum(), (locations, weights)
    )
    for got, want in zip(grads[1:], expected_grads):
        assert relative_error(got, want) < FP32_TOLERANCE


def _bad_dtype_cases():
    """(value dtype, locations dtype, weights dtype, message of the Python check)."""
    bf16, fp16, fp32, fp64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
    return [
        (fp16, bf16, bf16, r"sampling_locations has dtype torch.bfloat16 but value has torch.float16; .*"
         r"must be torch.float16 or, better, torch.float32"),
        (fp32, fp16, fp16, r"sampling_locations has dtype torch.float16 but value has torch.float32; .*"
         r"only float16/bfloat16 values pair with float32"),
        (fp64, fp32, fp32, r"sampling_locations has dtype torch.float32 but value has torch.float64"),
        (bf16, fp32, bf16, r"sampling_locations \(torch.float32\) and attention_weights \(torch.bfloat16\) "
         r"must share one dtype"),
        (bf16, bf16, fp16, r"attention_weights has dtype torch.float16 but value has torch.bfloat16"),
    ]


@pytest.mark.parametrize("value_dtype, location_dtype, weight_dtype, message", _bad_dtype_cases())
def test_disallowed_dtype_combinations_are_refused(value_dtype, location_dtype, weight_dtype, message):
    value, shapes, starts, locations, weights = make_inputs(2, 5, 2, 4, 3, [(3, 4), (2, 2)])
    args = [value.to(value_dtype), shapes, starts, locations.to(location_dtype), weights.to(weight_dtype)]
    with pytest.raises(ValueError, match=message):
        ops.ms_deform_attn(*args)
    # Direct callers of the compiled op get the C++ check, forward and backward.
    with pytest.raises(RuntimeError, match=r"sampling_locations \(.*\) and attention_weights \(.*\)"):
        torch.ops.ecom2f.ms_deform_attn(*args)
    grad_out = torch.zeros(2, 5, 8, dtype=value_dtype)
    with pytest.raises(RuntimeError, match=r"sampling_locations \(.*\) and attention_weights \(.*\)"):
        torch.ops.ecom2f.ms_deform_attn_backward(grad_out, *args)
    # So does tracing: the fake kernel refuses what the real one refuses.
    with FakeTensorMode() as mode, pytest.raises(ValueError, match=message):
        torch.ops.ecom2f.ms_deform_attn(*[mode.from_tensor(t) for t in args])


def test_fake_kernels_give_the_real_dtypes():
    config = dict(n=2, q=5, heads=2, head_dim=3, points=2, level_shapes=[(3, 4), (2, 2)])
    real = mixed_inputs(config, torch.bfloat16, requires_grad=False)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in real]
        out = torch.ops.ecom2f.ms_deform_attn(*fake)
        grads = torch.ops.ecom2f.ms_deform_attn_backward(torch.empty_like(out), *fake)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 6)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
    assert [g.shape for g in grads] == [real[0].shape, real[3].shape, real[4].shape]


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_opcheck_mixed(dtype):
    config = dict(n=2, q=5, heads=2, head_dim=3, points=2, level_shapes=[(3, 4), (2, 2)])
    args = mixed_inputs(config, dtype, seed=6)
    torch.library.opcheck(torch.ops.ecom2f.ms_deform_attn.default, args)
    grad_out = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
    detached = [t.detach() for t in args]
    torch.library.opcheck(torch.ops.ecom2f.ms_deform_attn_backward.default, (grad_out, *detached))


def test_torch_compile_fullgraph_mixed():
    config = dict(n=2, q=9, heads=2, head_dim=4, points=2, level_shapes=[(4, 5), (2, 3)])
    value, shapes, starts, locations, weights = mixed_inputs(config, torch.bfloat16, seed=8)

    def run(v, loc, w):
        return ops.ms_deform_attn(v, shapes, starts, loc, w)

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    eager_out = run(value, locations, weights)
    compiled_out = compiled(value, locations, weights)
    assert compiled_out.dtype == torch.bfloat16 and torch.equal(eager_out, compiled_out)
    eager_grads = torch.autograd.grad(eager_out.float().sum(), (value, locations, weights))
    compiled_grads = torch.autograd.grad(compiled_out.float().sum(), (value, locations, weights))
    for eager, compiled_grad in zip(eager_grads, compiled_grads):
        assert compiled_grad.dtype == eager.dtype and torch.equal(eager, compiled_grad)


def test_torch_compile_fullgraph_under_autocast():
    torch.manual_seed(0)
    module = _TinyDeformableAttention()
    shapes, starts, s = level_layout([(4, 4), (2, 2)])
    tokens = torch.randn(2, s, 8)
    reference = torch.rand(2, s, 2)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", torch.bfloat16):
        eager_out = module(tokens, reference, shapes, starts)
        compiled_out = compiled(tokens, reference, shapes, starts)
    assert eager_out.dtype == compiled_out.dtype == torch.bfloat16
    assert torch.equal(eager_out, compiled_out)
    compiled_out.float().sum().backward()
    assert module.offsets.weight.grad.dtype == torch.float32 and module.offsets.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_backward_allocates_only_its_outputs(device):
    # Besides the gradients themselves, the backward holds one fp32 accumulator for
    # grad_value; a kernel that materialised [N, Q, H, L, P, D] would need ~63 MB here
    # (~3 MB of gradients).
    config = dict(n=2, q=1024, heads=8, head_dim=32, points=4, level_shapes=[(32, 32), (16, 16)])
    value, shapes, starts, locations, weights = mixed_inputs(config, torch.bfloat16, device, requires_grad=False)
    grad_out = torch.ones(2, 1024, 8 * 32, dtype=torch.bfloat16, device=device)
    needed = sum(t.numel() * t.element_size() for t in (value, locations, weights)) + value.numel() * 4
    args = (grad_out, value, shapes, starts, locations, weights)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        torch.ops.ecom2f.ms_deform_attn_backward(*args)
        torch.cuda.synchronize()
        allocated = torch.cuda.max_memory_allocated() - before
        assert allocated <= 1.1 * needed + (2 << 20), (allocated, needed)
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.ops.ecom2f.ms_deform_attn_backward(*args)
    (event,) = [e for e in prof.events() if e.name == "ecom2f::ms_deform_attn_backward"]
    assert 0 < event.cpu_memory_usage <= 1.1 * needed, (event.cpu_memory_usage, needed)
