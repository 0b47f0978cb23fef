"""Fixtures of the GPU checks (tests/gpu): every test here needs a CUDA device.

Run them with ``scripts/gpu_check.sh`` on a GPU machine; without CUDA they are skipped.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def exact_fp32():
    """float32 matmuls and convolutions in full float32 (no TF32) for the block: comparisons
    between two float32 runs then differ only by summation order (~1e-6 relative)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
