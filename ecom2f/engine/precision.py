"""Which floating-point format a training or inference pass runs its matmuls in."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that have it (Ampere and newer), fp16 on older GPUs, fp32 on CPU.

    bf16 is allowed on CPU (autocast runs there, natively on CPUs with AVX512-BF16/AMX);
    fp16 needs GPU workers, a rule the configuration checks when it loads.
    """
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision, None for fp32."""
    return AUTOCAST_DTYPES.get(precision)
