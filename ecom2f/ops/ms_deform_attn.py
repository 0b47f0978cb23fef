"""The public multi-scale deformable attention function.

``ms_deform_attn`` checks its inputs (clear errors naming the argument), then runs the
compiled ``torch.ops.ecom2f.ms_deform_attn`` kernel for the tensors' device, or the
grid_sample reference where no kernel was built for it.

Mixed precision: ``value`` may be float16/bfloat16 while ``sampling_locations`` and
``attention_weights`` stay float32. Locations must not be rounded to bf16: its 8-bit
mantissa quantises a normalised location to 2^-8, i.e. 0.3-0.6 px on a 128-167-wide
level, which moves every bilinear sample. Under ``torch.autocast`` the function enforces
this split itself.

Level bounds: the compiled kernels skip any level whose tokens do not lie inside
``value`` (``start < 0``, ``start + h * w > S``, ``h`` or ``w`` outside 1..2^24): it adds zero to
the output and gets zero gradients. That is a memory-safety net, not a feature: the CPU
kernel refuses such a layout with an error, and ``check_layout`` (on by default) refuses it
everywhere, but the CUDA kernel cannot check without a device sync.
"""

from __future__ import annotations

import torch

from ecom2f.ops.extension import has_kernel
from ecom2f.ops.reference import ms_deform_attn_reference

# Decided once at import, so torch.compile sees constants rather than dispatcher queries.
_KERNEL_DEVICES = frozenset(device for device in ("cpu", "cuda") if has_kernel(device))
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_REDUCED_DTYPES = (torch.float16, torch.bfloat16)
# Longest side of a level (kMaxLevelSide in csrc/ms_deform_attn_common.h): beyond 2^24,
# float32 pixel coordinates no longer tell neighbouring pixels apart.
MAX_LEVEL_SIDE = 1 << 24


def check_ms_deform_attn_dtypes(
    value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> None:
    """Allowed: one floating dtype for all three, or fp16/bf16 value with fp32 locations and weights."""
    if value.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"ms_deform_attn: value must be a floating-point tensor, got {value.dtype}")
    reduced = value.dtype in _REDUCED_DTYPES
    allowed = (value.dtype, torch.float32) if reduced else (value.dtype,)
    for name, tensor in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if tensor.dtype in allowed:
            continue
        if reduced:
            fix = f"{value.dtype} or, better, torch.float32 (.float())"
        else:
            fix = f"{value.dtype} like value (.to({value.dtype})); only float16/bfloat16 values pair with float32"
        raise ValueError(
            f"ms_deform_attn: {name} has dtype {tensor.dtype} but value has {value.dtype}; "
            f"sampling_locations and attention_weights must be {fix}"
        )
    if sampling_locations.dtype != attention_weights.dtype:
        raise ValueError(
            f"ms_deform_attn: sampling_locations ({sampling_locations.dtype}) and attention_weights "
            f"({attention_weights.dtype}) must share one dtype; cast both with .float()"
        )


_RANKS = {"value": 4, "spatial_shapes": 2, "level_start_index": 1, "sampling_locations": 6, "attention_weights": 5}
_LAYOUTS = {
    "value": "[N, S, H, D]",
    "spatial_shapes": "[L, 2]",
    "level_start_index": "[L]",
    "sampling_locations": "[N, Q, H, L, P, 2]",
    "attention_weights": "[N, Q, H, L, P]",
}


def check_ms_deform_attn_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    check_layout: bool = True,
) -> None:
    """Raises ValueError naming the argument and the mismatch.

    dtypes: ``value`` float32/float64/float16/bfloat16; ``sampling_locations`` and
    ``attention_weights`` one dtype, equal to value's or float32 when value is fp16/bf16.
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
    _check_kinds(named)
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if check_layout:
        check_level_layout(spatial_shapes.tolist(), level_start_index.tolist(), value.shape[1])


def _check_kinds(named: dict[str, torch.Tensor]) -> None:
    """Tensors of the right rank, on one device, of allowed dtypes."""
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    for name, rank in _RANKS.items():
        if named[name].dim() != rank:
            raise ValueError(
                f"ms_deform_attn: {name} must be {_LAYOUTS[name]} (rank {rank}), got shape {tuple(named[name].shape)}"
            )
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"ms_deform_attn: all inputs must be on one device, got {listed}")
    check_ms_deform_attn_dtypes(named["value"], named["sampling_locations"], named["attention_weights"])
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype != torch.int64:
            raise ValueError(f"ms_deform_attn: {name} must be int64, got {named[name].dtype}; use .long()")


def _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    """Sizes that must agree between the arguments (N, H, L, P)."""
    n, _, heads, _ = value.shape
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


def check_level_layout(shapes: list[list[int]], starts: list[int], tokens: int) -> None:
    """Host values of ``spatial_shapes`` / ``level_start_index``: positive sides a float32 location
    can address, each level starting where the previous ends, ``tokens == sum(h * w)``."""
    total = 0
    for level, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h <= 0 or w <= 0:
            raise ValueError(f"ms_deform_attn: spatial_shapes[{level}] = ({h}, {w}) must be positive")
        if h > MAX_LEVEL_SIDE or w > MAX_LEVEL_SIDE:
            raise ValueError(
                f"ms_deform_attn: spatial_shapes[{level}] = ({h}, {w}) has a side above 2^24 = {MAX_LEVEL_SIDE}, "
                "beyond which float32 cannot address single pixels"
            )
        if start != total:
            raise ValueError(
                f"ms_deform_attn: level_start_index[{level}] = {start} is inconsistent with spatial_shapes "
                f"(expected {total}, the sum of h*w of the levels before)"
            )
        total += h * w
    if total != tokens:
        raise ValueError(
            f"ms_deform_attn: value has S={tokens} tokens but spatial_shapes {shapes} sums to {total}; "
            "S must equal sum(h * w)"
        )


def _autocast_inputs(value, sampling_locations, attention_weights):
    """Under autocast: value in the autocast dtype, locations and weights in float32.

    float64 values are left alone, as torch's autocast leaves float64 tensors alone; so
    are non-float inputs, which the checks then refuse by name.
    """
    tensors = (value, sampling_locations, attention_weights)
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
        return tensors
    device_type = value.device.type
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if not autocast or value.dtype == torch.float64:
        return tensors
    return value.to(torch.get_autocast_dtype(device_type)), sampling_locations.float(), attention_weights.float()


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    check_layout: bool = True,
) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable-DETR conventions).

    Args:
        value: ``[N, S, H, D]``, the tokens of all levels (level after level, row-major);
            float32, float64, float16 or bfloat16.
        spatial_shapes: ``[L, 2]`` int64, ``(h, w)`` per level.
        level_start_index: ``[L]`` int64, first token of each level.
        sampling_locations: ``[N, Q, H, L, P, 2]``, ``(x, y)`` normalised to [0, 1]
            (``align_corners=False``: pixel = x * w - 0.5); zeros outside the map.
            value's dtype, or float32 when value is float16/bfloat16.
        attention_weights: ``[N, Q, H, L, P]``, the dtype of ``sampling_locations``.
        check_layout: verify ``S == sum(h * w)`` and the level starts, which reads
            ``spatial_shapes`` / ``level_start_index`` (a host-device sync on CUDA). Pass
            False where the caller built them from host integers and checked them once.
            Skipped anyway under ``torch.compile`` and CUDA-graph capture.

    Under ``torch.autocast`` for the tensors' device, ``value`` is cast to the autocast
    dtype and ``sampling_locations`` / ``attention_weights`` to float32 (unless value is
    float64); outside autocast nothing is cast.

    Returns:
        ``[N, Q, H * D]``, in the dtype of ``value`` (fp16/bf16 accumulate in fp32).
        Gradients: ``value``'s in value's dtype (accumulated in fp32), the locations' and
        weights' in their dtype.

    Determinism: the forward is deterministic on every device, and so is the CPU
    backward (no atomics; the result does not depend on the thread count). The CUDA
    backward sums ``value``'s gradient with atomic adds in whatever order the threads
    arrive, so it differs run to run in the last bits, and a training run resumed on a GPU
    does not reproduce the original bit for bit. Under
    ``torch.use_deterministic_algorithms(True)`` the CUDA backward therefore raises, as
    torch's own non-deterministic CUDA ops do (or warns, with ``warn_only=True``).

    CUDA kernel choice: ``ECOM2F_MSDA_KERNEL=vectorized`` selects the experimental
    vectorized kernels where they apply (float32/float16/bfloat16 value, 3 or 4 levels of
    4 points, ``D / 4`` (fp32) or ``D / 8`` (fp16/bf16) a power of two up to 32) and the
    default ones elsewhere; ``vectorized-strict`` raises where they do not apply. Unset:
    the default kernels.
    """
    value, sampling_locations, attention_weights = _autocast_inputs(value, sampling_locations, attention_weights)
    compiling = torch.compiler.is_compiling()
    capturing = not compiling and value.is_cuda and torch.cuda.is_current_stream_capturing()
    check_ms_deform_attn_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        check_layout=check_layout and not (compiling or capturing),
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
