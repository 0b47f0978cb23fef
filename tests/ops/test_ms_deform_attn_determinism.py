"""Determinism: the CPU backward is bit-exact; the CUDA backward (atomics) says it is not."""

from __future__ import annotations

import pytest
import torch

from tests.ops.inputs import make_inputs
from tests.ops.oracle import ms_deform_attn_oracle
from tests.ops.test_ms_deform_attn import relative_error

ALERT = r"ms_deform_attn_backward_cuda does not have a deterministic implementation"


def crowded_inputs(device="cpu"):
    """Many queries sampling one small map, so grad_value sums hundreds of terms per
    element: the case where the summation order shows in the last bits. L = 3, P = 4,
    D = 32, so both CUDA kernels run it."""
    value, shapes, starts, locations, weights = make_inputs(
        2, 300, 8, 32, 4, [(4, 4), (2, 2), (1, 1)], dtype=torch.float32, seed=12
    )
    grad_out = torch.randn(2, 300, 8 * 32, generator=torch.Generator().manual_seed(4))
    return [t.to(device) for t in (grad_out, value, shapes, starts, locations, weights)]


@pytest.fixture
def threads_restored():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_backward_is_bit_exact_across_runs_and_thread_counts(deterministic_restored, threads_restored):
    torch.use_deterministic_algorithms(True)  # the CPU backward must not raise under it
    args = crowded_inputs()
    runs = []
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        runs.append(torch.ops.ecom2f.ms_deform_attn_backward(*args))
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            assert torch.equal(got, first)


@pytest.mark.gpu
def test_cuda_backward_raises_under_deterministic_algorithms(cuda_kernel, deterministic_restored):
    args = crowded_inputs("cuda")
    torch.use_deterministic_algorithms(True)
    torch.ops.ecom2f.ms_deform_attn(*args[1:])  # the forward has no atomics: allowed
    with pytest.raises(RuntimeError, match=ALERT):
        torch.ops.ecom2f.ms_deform_attn_backward(*args)


@pytest.mark.gpu
def test_cuda_backward_warns_with_warn_only_and_still_computes(cuda_kernel, deterministic_restored):
    grad_out, value, shapes, starts, locations, weights = crowded_inputs("cuda")
    torch.use_deterministic_algorithms(True, warn_only=True)
    with pytest.warns(UserWarning, match=ALERT):
        grads = torch.ops.ecom2f.ms_deform_attn_backward(grad_out, value, shapes, starts, locations, weights)
    inputs64 = [t.detach().cpu().double().requires_grad_() for t in (value, locations, weights)]
    expected = ms_deform_attn_oracle(inputs64[0], shapes.cpu(), starts.cpu(), inputs64[1], inputs64[2])
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double().cpu())
    for got, want in zip(grads, expected_grads):
        assert relative_error(got.cpu(), want) < 1e-5


@pytest.mark.gpu
def test_cuda_forward_is_bit_exact(cuda_kernel):
    _, value, shapes, starts, locations, weights = crowded_inputs("cuda")
    first = torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights)
    for _ in range(3):
        assert torch.equal(torch.ops.ecom2f.ms_deform_attn(value, shapes, starts, locations, weights), first)
