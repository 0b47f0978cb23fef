"""Multi-scale deformable attention: compiled CPU/CUDA kernels and a PyTorch reference."""

import warnings

import torch

from ecom2f.ops.extension import cuda_targets, extension_loaded, has_kernel, library_path
from ecom2f.ops.ms_deform_attn import check_ms_deform_attn_inputs, ms_deform_attn
from ecom2f.ops.reference import ms_deform_attn_reference
from ecom2f.ops.registration import FLOPS_PER_SAMPLE_CHANNEL, forward_flops

if extension_loaded():
    from ecom2f.ops import registration as _registration

    _registration.register()

if torch.cuda.is_available() and not has_kernel("cuda"):
    warnings.warn(
        "ecom2f: this build has no CUDA kernels for the deformable-attention op (it was compiled without "
        "nvcc); CUDA tensors use the slower grid_sample reference. Reinstall with CUDA_HOME set to build them.",
        stacklevel=2,
    )

__all__ = [
    "FLOPS_PER_SAMPLE_CHANNEL",
    "check_ms_deform_attn_inputs",
    "cuda_targets",
    "extension_loaded",
    "forward_flops",
    "has_kernel",
    "library_path",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]
