"""Records the tensors that actually reach ``torch.ops.ecom2f.ms_deform_attn``.

A ``TorchDispatchMode`` sits below autograd and autocast in the dispatcher, so it sees
the op's inputs after every cast the Python wrapper or the module made: what the kernel
really computes with.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class MsdaInputRecorder(TorchDispatchMode):
    """``calls``: one tuple ``(value, spatial_shapes, level_start_index, locations, weights)``
    of detached copies per forward call of the op."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.ecom2f.ms_deform_attn.default:
            self.calls.append(tuple(t.detach().clone() for t in args))
        return func(*args, **(kwargs or {}))

    @property
    def dtypes(self) -> list[tuple[torch.dtype, ...]]:
        """The dtypes of (value, locations, weights) of each recorded call."""
        return [(c[0].dtype, c[3].dtype, c[4].dtype) for c in self.calls]
