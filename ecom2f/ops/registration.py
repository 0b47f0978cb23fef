"""Python-side registrations of ``torch.ops.ecom2f.ms_deform_attn``.

The schema and the CPU/CUDA kernels live in C++ (``csrc/``). Here: the fake (meta)
kernels for tracing and ``torch.compile``, autograd through the C++ backward op, and
the FLOP formula that ``torch.utils.flop_counter.FlopCounterMode`` uses.

dtypes (as the C++ kernels): the output and grad_value take value's dtype; grad of the
sampling locations and attention weights take theirs, which may be float32 while value
is float16/bfloat16 (mixed precision).

FLOP convention (documented in docs/architecture.md): every sampled value costs a
bilinear interpolation of 4 corners (4 multiply-adds) and its attention weighting (one
multiply-add), i.e. ``10 * N * Q * H * L * P * D`` for the forward; the backward costs
twice the forward.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from ecom2f.ops.ms_deform_attn import check_ms_deform_attn_dtypes

FLOPS_PER_SAMPLE_CHANNEL = 10


def forward_flops(value_shape, sampling_locations_shape) -> int:
    """FLOPs of one forward: ``value [N, S, H, D]``, ``sampling_locations [N, Q, H, L, P, 2]``."""
    n, q, h, levels, points, _ = sampling_locations_shape
    return FLOPS_PER_SAMPLE_CHANNEL * n * q * h * levels * points * value_shape[3]


def _fake_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    # Refuse at trace time what the real kernels refuse at run time.
    check_ms_deform_attn_dtypes(value, sampling_locations, attention_weights)
    n, _, heads, head_dim = value.shape
    return value.new_empty((n, sampling_locations.shape[1], heads * head_dim))


def _fake_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    check_ms_deform_attn_dtypes(value, sampling_locations, attention_weights)
    return (
        torch.empty_like(value, memory_format=torch.contiguous_format),
        torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
        torch.empty_like(attention_weights, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = torch.ops.ecom2f.ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    needs = ctx.needs_input_grad
    return (
        grad_value if needs[0] else None,
        None,
        None,
        grad_locations if needs[3] else None,
        grad_weights if needs[4] else None,
    )


def _flops_forward(value_shape, spatial_shapes_shape, level_start_index_shape, loc_shape, weights_shape, *args, out_shape=None, **kwargs) -> int:
    return forward_flops(value_shape, loc_shape)


def _flops_backward(grad_shape, value_shape, spatial_shapes_shape, level_start_index_shape, loc_shape, weights_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * forward_flops(value_shape, loc_shape)


def register() -> None:
    """Registers everything above once; called when ``ecom2f.ops`` is imported."""
    torch.library.register_fake("ecom2f::ms_deform_attn")(_fake_forward)
    torch.library.register_fake("ecom2f::ms_deform_attn_backward")(_fake_backward)
    torch.library.register_autograd("ecom2f::ms_deform_attn", _backward, setup_context=_setup_context)
    register_flop_formula(torch.ops.ecom2f.ms_deform_attn)(_flops_forward)
    register_flop_formula(torch.ops.ecom2f.ms_deform_attn_backward)(_flops_backward)
