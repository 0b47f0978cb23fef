"""The deformable-attention op on CUDA, beyond tests/ops: every dtype on random shapes,
gradcheck, opcheck, torch.compile with inductor, CUDA-graph capture, empty batches,
strided inputs and COCO-size problems against the CPU float64 oracle.

COCO sizes: the oracle cannot afford all 21,504 queries of a batch of 8 (it materialises
every corner of every sample in float64), so the kernel runs the whole problem and the
oracle checks a random subset of queries. The gradient flowing back is zero outside that
subset, so the kernel's grad_value must equal the oracle's over the subset alone, and the
other queries' location and weight gradients must be exactly zero: that checks the indexing
of the whole tensor, not only of the subset.
"""

from __future__ import annotations

import pytest
import torch

# The project's names this file uses, in one place.
from ecom2f.ops import ms_deform_attn
from tests.ops.inputs import level_layout, make_inputs, random_configs
from tests.ops.oracle import ms_deform_attn_oracle
from tests.ops.test_ms_deform_attn import relative_error

pytestmark = pytest.mark.gpu

CONFIGS = random_configs(10, seed=4242)
# Relative to the largest magnitude of the expected tensor. The oracle gets the same rounded
# inputs, so what is left is fp32 accumulation plus one final rounding to the half dtype
# (unit roundoff 2^-8 bf16, 2^-11 fp16): 2^-6 / 2^-9 leave a factor 4 of margin.
HALF_TOLERANCE = {torch.bfloat16: 2**-6, torch.float16: 2**-9}
FP32_TOLERANCE = 1e-5
# At COCO sizes the kernel's fp32 pixel coordinate x * w - 0.5 (w = 167, 84, ... not powers of
# two) rounds by up to ~1e-5 px, which moves each bilinear sample by that much: ~5e-6 relative.
COCO_FP32_TOLERANCE = 5e-5
# Levels of stride 8/16/32 of Mask2Former's encoder: 1024x1024 (LSJ training) and 800x1333
# (COCO evaluation; ceil(800 / 8) x ceil(1333 / 8), and so on).
COCO_LEVELS = {
    "1024x1024": [(128, 128), (64, 64), (32, 32)],
    "800x1333": [(100, 167), (50, 84), (25, 42)],
}
HEADS, HEAD_DIM, POINTS = 8, 32, 4


def _cuda(tensors, dtypes=None, requires_grad=True):
    """``make_inputs`` tensors -> CUDA; value, locations and weights cast to ``dtypes`` (in that
    order) and made leaves that require grad."""
    floats = iter(dtypes or (None, None, None))
    out = []
    for t in tensors:
        if t.is_floating_point():
            dtype = next(floats)
            t = t.to(device="cuda", dtype=dtype or t.dtype).detach().requires_grad_(requires_grad)
        else:
            t = t.cuda()
        out.append(t)
    return out


def _oracle(value, shapes, starts, locations, weights, grad_out):
    """float64 output and the three gradients for ``grad_out`` (all CPU)."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in (value, locations, weights)]
    expected = ms_deform_attn_oracle(leaves[0], shapes.cpu(), starts.cpu(), leaves[1], leaves[2])
    grads = torch.autograd.grad(expected, leaves, grad_out.cpu().double())
    return expected, grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"cfg{i}" for i in range(len(CONFIGS))])
def test_uniform_half_precision_matches_oracle(config, dtype, record_property):
    value, shapes, starts, locations, weights = _cuda(make_inputs(**config, seed=31), (dtype,) * 3)
    out = ms_deform_attn(value, shapes, starts, locations, weights)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(8)).to(dtype)
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out.cuda())
    expected, expected_grads = _oracle(value, shapes, starts, locations, weights, grad_out)
    errors = [relative_error(out.float().cpu(), expected)]
    errors += [relative_error(g.float().cpu(), e) for g, e in zip(grads, expected_grads)]
    record_property("relative_errors", [f"{e:.2e}" for e in errors])
    assert out.dtype == dtype and [g.dtype for g in grads] == [dtype] * 3
    assert max(errors) < HALF_TOLERANCE[dtype], errors


def test_gradcheck_fp64_on_cuda():
    value, shapes, starts, locations, weights = _cuda(
        make_inputs(2, 3, 2, 3, 2, [(3, 4), (2, 2)], seed=4, outside=0.1)
    )
    # The backward accumulates grad_value with atomics, so two runs may differ in the last bits.
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w), (value, locations, weights),
        eps=1e-6, atol=1e-7, nondet_tol=1e-12,
    )


@pytest.mark.parametrize("dtypes", [(torch.float32,) * 3, (torch.float64,) * 3,
                                    (torch.bfloat16, torch.float32, torch.float32)],
                         ids=["fp32", "fp64", "bf16-value"])
def test_opcheck_on_cuda(dtypes):
    args = _cuda(make_inputs(2, 5, 2, 3, 2, [(3, 4), (2, 2)], seed=6), dtypes)
    torch.library.opcheck(torch.ops.ecom2f.ms_deform_attn.default, args)
    out = torch.ops.ecom2f.ms_deform_attn(*args)
    grad_out = torch.randn_like(out)
    torch.library.opcheck(torch.ops.ecom2f.ms_deform_attn_backward.default,
                          (grad_out, *[t.detach() for t in args]))


def test_torch_compile_inductor_fullgraph(exact_fp32):
    value, shapes, starts, locations, weights = _cuda(make_inputs(2, 40, 4, 16, 4, [(8, 10), (4, 5)], seed=9, dtype=torch.float32))

    def block(v, loc, w):
        # Surrounding pointwise work that inductor fuses into Triton kernels around the op.
        out = ms_deform_attn(v * 2.0, shapes, starts, loc.clamp(0, 1), w.softmax(-1))
        return torch.nn.functional.gelu(out) + 1.0

    compiled = torch.compile(block, fullgraph=True)
    eager_out, compiled_out = block(value, locations, weights), compiled(value, locations, weights)
    assert torch.allclose(eager_out, compiled_out, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn_like(eager_out)
    eager_grads = torch.autograd.grad(eager_out, (value, locations, weights), grad_out)
    compiled_grads = torch.autograd.grad(compiled_out, (value, locations, weights), grad_out)
    for name, eager, got in zip(("value", "locations", "weights"), eager_grads, compiled_grads):
        assert relative_error(got, eager) < 1e-5, name


def test_cuda_graph_replays_forward_and_backward():
    config = dict(n=2, q=64, heads=4, head_dim=16, points=4, level_shapes=[(12, 16), (6, 8)])
    value, shapes, starts, locations, weights = _cuda(make_inputs(**config, seed=10, dtype=torch.float32))
    grad_out = torch.randn(2, 64, 64, device="cuda")

    def step():
        out = ms_deform_attn(value, shapes, starts, locations, weights)
        return (out, *torch.autograd.grad(out, (value, locations, weights), grad_out))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()

    fresh = _cuda(make_inputs(**config, seed=11, dtype=torch.float32), requires_grad=False)
    with torch.no_grad():
        for static, new in zip((value, locations, weights), (fresh[0], fresh[3], fresh[4])):
            static.copy_(new)
        grad_out.normal_()
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    assert torch.equal(captured[0], eager[0])  # one thread per output: deterministic
    for name, got, want in zip(("value", "locations", "weights"), captured[1:], eager[1:]):
        assert relative_error(got, want) < 1e-6, name


@pytest.mark.parametrize("n, q", [(0, 6), (2, 0)])
def test_empty_batch_or_queries_forward_and_backward(n, q):
    value, shapes, starts, locations, weights = _cuda(make_inputs(n, q, 2, 5, 3, [(3, 3), (2, 2)], seed=12))
    out = ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.shape == (n, q, 10)
    grads = torch.autograd.grad(out.sum(), (value, locations, weights), allow_unused=True)
    for tensor, grad in zip((value, locations, weights), grads):
        grad = torch.zeros_like(tensor) if grad is None else grad
        # grad_value of Q=0 must be written zeros, not whatever the allocator held.
        assert grad.shape == tensor.shape and torch.equal(grad, torch.zeros_like(tensor))


def test_strided_inputs_give_the_contiguous_result():
    value, shapes, starts, locations, weights = _cuda(make_inputs(2, 33, 3, 8, 4, [(9, 11), (5, 6)], seed=13),
                                                      requires_grad=False)
    strided = [
        value.transpose(2, 3).contiguous().transpose(2, 3),  # same values, other strides
        locations.transpose(0, 1).contiguous().transpose(0, 1),
        torch.stack([weights, -weights], dim=-1)[..., 0],
    ]
    assert not any(t.is_contiguous() for t in strided)
    leaves = [t.requires_grad_() for t in strided]
    plain = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out_strided = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    out_plain = ms_deform_attn(plain[0], shapes, starts, plain[1], plain[2])
    assert torch.equal(out_strided, out_plain)
    grad_out = torch.randn_like(out_plain)
    for got, want in zip(torch.autograd.grad(out_strided, leaves, grad_out),
                         torch.autograd.grad(out_plain, plain, grad_out)):
        assert relative_error(got, want) < 1e-6
    # The compiled op itself either refuses strided tensors or computes the same thing.
    try:
        raw = torch.ops.ecom2f.ms_deform_attn(strided[0].detach(), shapes, starts, strided[1].detach(),
                                              strided[2].detach())
    except RuntimeError as error:
        assert "contiguous" in str(error), error
    else:
        assert torch.equal(raw, out_plain.detach())


def _coco_problem(levels, batch, dtype, queries_checked, seed):
    """Random COCO-size inputs on CUDA (value in ``dtype``; locations and weights fp32 unless
    ``dtype`` is fp32/fp64), a grad_out that is zero outside ``queries_checked`` random queries,
    and those query indices."""
    generator = torch.Generator().manual_seed(seed)
    shapes, starts, tokens = level_layout(levels)
    value = torch.randn(batch, tokens, HEADS, HEAD_DIM, generator=generator).to(dtype)
    locations = torch.rand(batch, tokens, HEADS, len(levels), POINTS, 2, generator=generator) * 1.2 - 0.1
    weights = torch.rand(batch, tokens, HEADS, len(levels) * POINTS, generator=generator).softmax(-1)
    weights = weights.view(batch, tokens, HEADS, len(levels), POINTS)
    index = torch.randperm(tokens, generator=generator)[:queries_checked].sort().values
    grad_out = torch.zeros(batch, tokens, HEADS * HEAD_DIM)
    grad_out[:, index] = torch.randn(batch, queries_checked, HEADS * HEAD_DIM, generator=generator)
    leaves = [t.cuda().requires_grad_() for t in (value, locations, weights)]
    return leaves, shapes.cuda(), starts.cuda(), grad_out.to(dtype).cuda(), index


def _off_cell_boundaries(locations, levels, margin=1e-3):
    """``[N, Q, H, L, P]`` bool: samples whose pixel coordinates lie more than ``margin`` px
    from a cell boundary. At a boundary the location gradient jumps (the sample changes cell),
    and there the fp32 product ``x * w`` of the kernel and the oracle's fp64 one can fall on
    either side: a level width that is not a power of two rounds (167: ~1e-5 px)."""
    sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float64)  # [L, 2]: x scales by w
    pixel = locations.detach().double().cpu() * sizes[:, None, :] - 0.5  # [N, Q, H, L, P, 2]
    return ((pixel - pixel.round()).abs() > margin).all(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-value"])
@pytest.mark.parametrize("image", list(COCO_LEVELS))
def test_coco_size_batch_8_matches_oracle_on_sampled_queries(image, dtype, record_property):
    (value, locations, weights), shapes, starts, grad_out, index = _coco_problem(
        COCO_LEVELS[image], 8, dtype, queries_checked=48, seed=14)
    out = ms_deform_attn(value, shapes, starts, locations, weights)
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out)
    torch.cuda.synchronize()

    subset = [t.detach()[:, index] for t in (locations, weights)]
    expected, (e_value, e_locations, e_weights) = _oracle(value, shapes, starts, *subset, grad_out[:, index])
    interior = _off_cell_boundaries(subset[0], COCO_LEVELS[image])
    errors = {
        "out": relative_error(out[:, index].float().cpu(), expected),
        "grad_value": relative_error(grads[0].float().cpu(), e_value),
        "grad_locations": relative_error(grads[1][:, index].cpu()[interior], e_locations[interior]),
        "grad_weights": relative_error(grads[2][:, index].cpu(), e_weights),
    }
    record_property("relative_errors", {k: f"{v:.2e}" for k, v in errors.items()})
    record_property("samples_on_cell_boundaries", int((~interior).sum()))
    half = HALF_TOLERANCE.get(dtype, COCO_FP32_TOLERANCE)
    limits = {"out": half, "grad_value": half, "grad_locations": COCO_FP32_TOLERANCE,
              "grad_weights": COCO_FP32_TOLERANCE}
    assert all(errors[k] < limits[k] for k in errors), (errors, limits)
    others = torch.ones(out.shape[1], dtype=torch.bool)
    others[index] = False
    assert torch.count_nonzero(grads[1][:, others.cuda()]) == 0
    assert torch.count_nonzero(grads[2][:, others.cuda()]) == 0


@pytest.mark.parametrize("dtypes", [(torch.bfloat16,) * 3, (torch.bfloat16, torch.float32, torch.float32),
                                    (torch.float16, torch.float32, torch.float32)],
                         ids=["bf16", "bf16-value", "fp16-value"])
def test_half_precision_grad_value_stays_finite_at_coco_size(dtypes, record_property):
    """Every token of a 1024x1024 batch of 8 is hit by many samples: grad_value sums them
    without NaN or inf, and agrees with the fp32 kernel (itself checked against the oracle) run
    on the same rounded inputs."""
    (value, locations, weights), shapes, starts, _, _ = _coco_problem(COCO_LEVELS["1024x1024"], 8,
                                                                      torch.float32, 1, seed=15)
    grad_out = torch.randn(value.shape[0], value.shape[1], HEADS * HEAD_DIM, device="cuda").to(dtypes[0])
    half = [t.detach().to(d).requires_grad_() for t, d in zip((value, locations, weights), dtypes)]
    out = ms_deform_attn(half[0], shapes, starts, half[1], half[2])
    (grad_value,) = torch.autograd.grad(out, half[0], grad_out)
    assert grad_value.dtype == dtypes[0]
    assert torch.isfinite(grad_value).all(), "grad_value has NaN/inf"
    # The reference: the fp32 kernel on the same rounded inputs, so only the accumulation and
    # the final rounding differ.
    upcast = [t.detach().float().requires_grad_() for t in half]
    reference_out = ms_deform_attn(upcast[0], shapes, starts, upcast[1], upcast[2])
    (reference,) = torch.autograd.grad(reference_out, upcast[0], grad_out.float())
    error = relative_error(grad_value.float(), reference)
    record_property("grad_value_relative_error", f"{error:.2e}")
    assert error < HALF_TOLERANCE[dtypes[0]], error
