"""The opt-in vectorized CUDA kernels (ECOM2F_MSDA_KERNEL=vectorized) next to the default ones.

Every test runs both kernels (the ``cuda_kernel`` fixture) against the float64 oracle with
the tolerances of the other CUDA tests, on shapes the vectorized kernel handles: 3 or 4
levels of 4 points, D / 4 (fp32) or D / 8 (fp16/bf16) a power of two up to 32. Heads of 3
and odd query counts leave warps that span queries and a partly idle last warp.
"""

from __future__ import annotations

import pytest
import torch

from tests.ops.inputs import make_inputs
from tests.ops.oracle import ms_deform_attn_oracle
from tests.ops.test_ms_deform_attn import relative_error
from tests.ops.test_ms_deform_attn_mixed_precision import FP32_TOLERANCE, HALF_TOLERANCE

CONFIGS = [
    dict(n=1, q=1, heads=1, head_dim=8, level_shapes=[(5, 7), (3, 4), (1, 2)]),
    dict(n=2, q=33, heads=3, head_dim=32, level_shapes=[(9, 11), (5, 6), (3, 3), (1, 1)]),
    dict(n=3, q=7, heads=8, head_dim=32, level_shapes=[(16, 16), (8, 8), (4, 4)]),
    dict(n=2, q=130, heads=2, head_dim=64, level_shapes=[(6, 5), (3, 3), (2, 2), (1, 3)]),
    dict(n=1, q=5, heads=5, head_dim=16, level_shapes=[(2, 9), (1, 5), (1, 1)]),
]
IDS = [f"cfg{i}" for i in range(len(CONFIGS))]
POINTS = 4
# value dtype, locations dtype, tolerances of (output, grad value, grad locations and
# weights): those of test_ms_deform_attn_cuda.py (fp32, all-half) and of the mixed-precision
# tests (test_ms_deform_attn_mixed_precision.py).
_BF16, _FP16 = HALF_TOLERANCE[torch.bfloat16], HALF_TOLERANCE[torch.float16]
DTYPES = {
    "fp32": (torch.float32, torch.float32, (1e-5, 1e-5, 1e-5)),
    "bf16-mixed": (torch.bfloat16, torch.float32, (_BF16, _BF16, FP32_TOLERANCE)),
    "fp16-mixed": (torch.float16, torch.float32, (_FP16, _FP16, FP32_TOLERANCE)),
    "bf16": (torch.bfloat16, torch.bfloat16, (2e-2, 8e-2, 8e-2)),
    "fp16": (torch.float16, torch.float16, (5e-3, 2e-2, 2e-2)),
}


def cuda_inputs(config, value_dtype, location_dtype, seed=0):
    # fp16/bf16 locations off the map land exactly on its edge (pixel -1 or w) often
    # enough; there the kernels (zero gradient, as Deformable-DETR) and the oracle (a
    # one-sided derivative) legitimately differ. fp32 locations keep the off-map points.
    outside = 0.25 if location_dtype == torch.float32 else 0.0
    value, shapes, starts, locations, weights = make_inputs(**config, points=POINTS, seed=seed, outside=outside)
    tensors = [value.to(value_dtype), locations.to(location_dtype), weights.to(location_dtype)]
    value, locations, weights = [t.cuda().requires_grad_() for t in tensors]
    return value, shapes.cuda(), starts.cuda(), locations, weights


@pytest.mark.gpu
@pytest.mark.parametrize("dtypes", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_both_kernels_match_the_oracle(config, dtypes, cuda_kernel):
    value_dtype, location_dtype, (out_tolerance, value_tolerance, location_tolerance) = DTYPES[dtypes]
    value, shapes, starts, locations, weights = cuda_inputs(config, value_dtype, location_dtype, seed=31)
    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.dtype == value_dtype

    inputs64 = [t.detach().cpu().double().requires_grad_() for t in (value, locations, weights)]
    expected = ms_deform_attn_oracle(inputs64[0], shapes.cpu(), starts.cpu(), inputs64[1], inputs64[2])
    assert relative_error(out.cpu(), expected) < out_tolerance

    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8)).to(value_dtype)
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out.cuda())
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double())
    assert [g.dtype for g in grads] == [value_dtype, location_dtype, location_dtype]
    tolerances = (value_tolerance, location_tolerance, location_tolerance)
    for name, got, want, tol in zip(("value", "sampling_locations", "attention_weights"), grads, expected_grads,
                                    tolerances):
        assert relative_error(got.cpu(), want) < tol, name


def _misaligned_value():
    """A contiguous fp32 value whose data starts 4 bytes past a 16-byte boundary."""
    config = dict(n=2, q=9, heads=2, head_dim=8, level_shapes=[(4, 4), (2, 2), (1, 1)])
    value, shapes, starts, locations, weights = cuda_inputs(config, torch.float32, torch.float32)
    storage = torch.empty(value.numel() + 1, device="cuda")
    shifted = storage[1:].view(value.shape)
    shifted.copy_(value.detach())
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    return shifted.requires_grad_(), shapes, starts, locations, weights


def _unsupported_cases():
    """(name, inputs, reason in the vectorized-strict error)."""
    def make(value_dtype, points=POINTS, **config):
        value, shapes, starts, locations, weights = make_inputs(**config, points=points, seed=2)
        tensors = [value.to(value_dtype), locations.to(value_dtype), weights.to(value_dtype)]
        value, locations, weights = [t.cuda().requires_grad_() for t in tensors]
        return value, shapes.cuda(), starts.cuda(), locations, weights

    three_levels = [(4, 4), (2, 2), (1, 1)]
    return [
        ("head_dim_5", lambda: make(torch.float32, n=2, q=5, heads=2, head_dim=5, level_shapes=three_levels),
         "head dim D must be"),
        ("head_dim_4_in_bf16", lambda: make(torch.bfloat16, n=2, q=5, heads=2, head_dim=4, level_shapes=three_levels),
         "head dim D must be"),
        ("two_levels", lambda: make(torch.float32, n=2, q=5, heads=2, head_dim=8, level_shapes=[(4, 4), (2, 2)]),
         "L = 3 or 4 levels of P = 4 points"),
        ("three_points", lambda: make(torch.float32, points=3, n=2, q=5, heads=2, head_dim=8,
                                      level_shapes=three_levels), "L = 3 or 4 levels of P = 4 points"),
        ("float64", lambda: make(torch.float64, n=2, q=5, heads=2, head_dim=8, level_shapes=three_levels),
         "value is float64"),
        ("misaligned", _misaligned_value, "16-byte boundary"),
    ]


UNSUPPORTED = _unsupported_cases()


@pytest.mark.gpu
@pytest.mark.parametrize("name, make, reason", UNSUPPORTED, ids=[case[0] for case in UNSUPPORTED])
def test_vectorized_falls_back_where_it_does_not_apply(name, make, reason, monkeypatch):
    value, shapes, starts, locations, weights = make()
    monkeypatch.setenv("ECOM2F_MSDA_KERNEL", "vectorized")
    out = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    grads = torch.autograd.grad(out.float().sum(), (value, locations, weights))
    inputs64 = [t.detach().cpu().double().requires_grad_() for t in (value, locations, weights)]
    expected = ms_deform_attn_oracle(inputs64[0], shapes.cpu(), starts.cpu(), inputs64[1], inputs64[2])
    tolerance = 2e-2 if value.dtype == torch.bfloat16 else 1e-5
    assert relative_error(out.cpu(), expected) < tolerance
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), inputs64)):
        assert relative_error(got.cpu(), want) < 4 * tolerance

    monkeypatch.setenv("ECOM2F_MSDA_KERNEL", "vectorized-strict")
    with pytest.raises(RuntimeError, match=f"vectorized-strict, but the vectorized kernel does not handle.*{reason}"):
        torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)


@pytest.mark.gpu
def test_unknown_kernel_name_is_refused(monkeypatch):
    value, shapes, starts, locations, weights = cuda_inputs(CONFIGS[0], torch.float32, torch.float32)
    monkeypatch.setenv("ECOM2F_MSDA_KERNEL", "fast")
    with pytest.raises(RuntimeError, match="ECOM2F_MSDA_KERNEL=fast names no deformable-attention kernel"):
        torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)


@pytest.mark.gpu
def test_kernels_agree_at_mask2former_size(monkeypatch):
    # bf16 value, fp32 geometry, levels 64², 32², 16², Q = S, 8 heads of 32: the model's case.
    config = dict(n=2, q=5376, heads=8, head_dim=32, level_shapes=[(64, 64), (32, 32), (16, 16)])
    inputs = cuda_inputs(config, torch.bfloat16, torch.float32, seed=5)
    grad_out = torch.randn(2, 5376, 256, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16).cuda()
    results = {}
    for kernel in ("default", "vectorized-strict"):
        monkeypatch.setenv("ECOM2F_MSDA_KERNEL", kernel)
        out = torch.ops.ecom2f.ms_deform_attn(*inputs)
        results[kernel] = [out, *torch.autograd.grad(out, (inputs[0], inputs[3], inputs[4]), grad_out)]
    # Both accumulate in fp32 in different orders: the bf16 results may differ by a rounding.
    tolerances = (HALF_TOLERANCE[torch.bfloat16], HALF_TOLERANCE[torch.bfloat16], 1e-4, 1e-4)
    for name, a, b, tol in zip(("output", "value", "locations", "weights"), *results.values(), tolerances):
        assert relative_error(b, a) < tol, name
