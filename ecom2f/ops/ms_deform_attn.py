"""The public multi-scale deformable attention function.

``ms_deform_attn`` checks its inputs (clear errors naming the argument), then runs the
compiled ``torch.ops.ecom2f.ms_deform_attn`` kernel for the tensors' device, or the
grid_sample reference where no kernel was built for it.
"""

from __future__ import annotations

import torch

from ecom2f.ops.extension import has_kernel
from ecom2f.ops.reference import ms_deform_attn_reference

# Decided once at import, so torch.compile sees constants rather than dispatcher queries.
_KERNEL_DEVICES = frozenset(device for device in ("cpu", "cuda") if has_kernel(device))
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_ms_deform_attn_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    check_layout: bool = True,
) -> None:
    """Raises ValueError naming the argument and the mismatch.

    ``check_layout`` also reads ``spatial_shapes`` and ``level_start_index`` (a device
    sync on CUDA) to verify ``S == sum(h * w)`` and the level starts.
    """
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    ranks = {"value": 4, "spatial_shapes": 2, "level_start_index": 1, "sampling_locations": 6, "attention_weights": 5}
    layouts = {
        "value": "[N, S, H, D]",
        "spatial_shapes": "[L, 2]",
        "level_start_index": "[L]",
        "sampling_locations": "[N, Q, H, L, P, 2]",
        "attention_weights": "[N, Q, H, L, P]",
    }
    for name, rank in ranks.items():
        if named[name].dim() != rank:
            raise ValueError(
                f"ms_deform_attn: {name} must be {layouts[name]} (rank {rank}), got shape {tuple(named[name].shape)}"
            )
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"ms_deform_attn: all inputs must be on one device, got {listed}")
    if value.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"ms_deform_attn: value must be a floating-point tensor, got {value.dtype}")
    for name in ("sampling_locations", "attention_weights"):
        if named[name].dtype != value.dtype:
            raise ValueError(
                f"ms_deform_attn: {name} has dtype {named[name].dtype} but value has {value.dtype}; "
                "cast them to one dtype"
            )
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype != torch.int64:
            raise ValueError(f"ms_deform_attn: {name} must be int64, got {named[name].dtype}; use .long()")

    n, s, heads, _ = value.shape
    levels = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        raise ValueError(f"ms_deform_attn: spatial_shapes must be [L, 2] (h, w), got {tuple(spatial_shapes.shape)}")
    if level_start_index.shape[0] != levels:
        raise ValueError(
            f"ms_deform_attn: level_start_index has {level_start_index.shape[0]} entries but spatial_shapes "
            f"has {levels} levels"
        )
    loc = sampling_locations.shape
    if loc[5] != 2 or loc[0] != n or loc[2] != heads or loc[3] != levels:
        raise ValueError(
            f"ms_deform_attn: sampling_locations has shape {tuple(loc)}, expected [N={n}, Q, H={heads}, "
            f"L={levels}, P, 2] from value {tuple(value.shape)} and spatial_shapes"
        )
    if tuple(attention_weights.shape) != tuple(loc[:5]):
        raise ValueError(
            f"ms_deform_attn: attention_weights has shape {tuple(attention_weights.shape)}, expected "
            f"sampling_locations.shape[:5] = {tuple(loc[:5])}"
        )
    if not check_layout:
        return
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    total = 0
    for level, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h <= 0 or w <= 0:
            raise ValueError(f"ms_deform_attn: spatial_shapes[{level}] = ({h}, {w}) must be positive")
        if start != total:
            raise ValueError(
                f"ms_deform_attn: level_start_index[{level}] = {start} is inconsistent with spatial_shapes "
                f"(expected {total}, the sum of h*w of the levels before)"
            )
        total += h * w
    if total != s:
        raise ValueError(
            f"ms_deform_attn: value has S={s} tokens but spatial_shapes {shapes} sums to {total}; "
            "S must equal sum(h * w)"
        )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable-DETR conventions).

    Args:
        value: ``[N, S, H, D]``, the tokens of all levels (level after level, row-major).
        spatial_shapes: ``[L, 2]`` int64, ``(h, w)`` per level.
        level_start_index: ``[L]`` int64, first token of each level.
        sampling_locations: ``[N, Q, H, L, P, 2]``, ``(x, y)`` normalised to [0, 1]
            (``align_corners=False``: pixel = x * w - 0.5); zeros outside the map.
        attention_weights: ``[N, Q, H, L, P]``.

    Returns:
        ``[N, Q, H * D]``, in the dtype of ``value`` (fp16/bf16 accumulate in fp32).
    """
    compiling = torch.compiler.is_compiling()
    capturing = value.is_cuda and torch.cuda.is_current_stream_capturing()
    check_ms_deform_attn_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        check_layout=not (compiling or capturing),
    )
    if value.device.type in _KERNEL_DEVICES:
        return torch.ops.ecom2f.ms_deform_attn(
            value.contiguous(),
            spatial_shapes.contiguous(),
            level_start_index.contiguous(),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
        )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
