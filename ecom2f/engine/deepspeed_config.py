"""The DeepSpeed configuration generated from ours, and DeepSpeed set-up on CPU workers.

Mixed precision is torch autocast (DeepSpeed's ``torch_autocast`` section), the way
Mask2Former trains with AMP: parameters, gradients, their all-reduce and the optimizer
state stay fp32, and only the forward's matmuls and convolutions run in bf16/fp16.
DeepSpeed's own ``bf16``/``fp16`` modes would instead cast the parameters (but not the
buffers: the first convolution then gets fp32 pixels and bf16 weights) and keep fp32 master
copies inside the optimizer, which is a different recipe from the one ECO-M2F's parent is
specified by.
"""

from __future__ import annotations

from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def build_deepspeed_config(
    *,
    micro_batch_per_worker: int,
    gradient_accumulation_steps: int = 1,
    zero_stage: int = 0,
    precision: Precision = "fp32",
    gradient_clipping: float | None = 0.01,
    steps_per_print: int = 10**9,
) -> dict:
    """A DeepSpeed config dict for a client-side optimizer and LR scheduler.

    ``gradient_clipping`` clips the global norm over the whole model, which is
    Mask2Former's ``full_model`` clipping (CLIP_VALUE 0.01). The optimizer (torch AdamW with
    our parameter groups) and the scheduler are passed to ``deepspeed.initialize``, so the
    config names neither. ``precision`` bf16/fp16 enables torch autocast with no module on
    DeepSpeed's lower-precision communication list, so gradients are reduced in fp32 (fp16
    adds DeepSpeed's gradient scaler).
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if micro_batch_per_worker < 1 or gradient_accumulation_steps < 1:
        raise ValueError(
            f"micro_batch_per_worker ({micro_batch_per_worker}) and gradient_accumulation_steps "
            f"({gradient_accumulation_steps}) must be at least 1"
        )
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_per_worker,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "zero_optimization": {"stage": zero_stage, "overlap_comm": False, "contiguous_gradients": True},
        # Our AdamW is a plain torch optimizer, which ZeRO calls "untested".
        "zero_allow_untested_optimizer": True,
        "steps_per_print": steps_per_print,
        "wall_clock_breakdown": False,
    }
    if precision in AUTOCAST_DTYPES:
        config["torch_autocast"] = {
            "enabled": True,
            "dtype": AUTOCAST_DTYPES[precision],
            "lower_precision_safe_modules": [],
        }
    if gradient_clipping is not None:
        if gradient_clipping <= 0:
            raise ValueError(f"gradient_clipping must be positive or None, got {gradient_clipping}")
        config["gradient_clipping"] = gradient_clipping
    return config


def disable_cpu_shm_comm_build() -> None:
    """Skips DeepSpeed's shared-memory comm op on CPU (its first build takes ~80 s).

    gloo collectives are used instead; call before ``deepspeed.initialize``.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
