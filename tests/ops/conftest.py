"""Fixtures of the op tests."""

from __future__ import annotations

import pytest
import torch

# ECOM2F_MSDA_KERNEL values that pin down which CUDA kernel runs: "vectorized-strict"
# raises rather than fall back, so a test parametrised with it really tests that kernel.
CUDA_KERNELS = ["default", "vectorized-strict"]


@pytest.fixture(params=CUDA_KERNELS)
def cuda_kernel(request, monkeypatch) -> str:
    """Selects the CUDA kernel through ECOM2F_MSDA_KERNEL, which the op reads on every call."""
    monkeypatch.setenv("ECOM2F_MSDA_KERNEL", request.param)
    return request.param


@pytest.fixture
def deterministic_restored():
    """Restores torch's deterministic-algorithms setting after the test changes it."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
