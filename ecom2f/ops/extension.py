"""Loading the compiled ``ecom2f._C`` library and asking what it provides."""

from __future__ import annotations

import functools
import warnings

import torch

OP_NAME = "ecom2f::ms_deform_attn"


@functools.cache
def extension_loaded() -> bool:
    """Whether ``ecom2f._C`` imported, which registers ``torch.ops.ecom2f.*``.

    Warns once when it did not: the package then runs on the grid_sample reference.
    """
    try:
        import ecom2f._C  # noqa: F401  (registers the op with torch's dispatcher)
    except ImportError as error:
        warnings.warn(
            f"ecom2f: the compiled deformable-attention op is unavailable ({error}); using the slower "
            "grid_sample reference. Reinstall with `pip install --no-build-isolation -e .` to build it.",
            stacklevel=2,
        )
        return False
    return True


def has_kernel(device_type: str) -> bool:
    """Whether the compiled op has a kernel for ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    if not extension_loaded():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, key)


def cuda_targets() -> tuple[str, ...] | None:
    """The GPU code in the compiled library, as nvcc names it (``("sm_80", "sm_90",
    "compute_90")``: cubins, then PTX for later GPUs), or None when the library is missing,
    has no CUDA kernels, or was built with an arch list torch expands itself (``native``)."""
    if not extension_loaded():
        return None
    import ecom2f._C

    recorded = getattr(ecom2f._C, "cuda_targets", "")
    return tuple(recorded.split(",")) if recorded else None


def library_path() -> str | None:
    """Path of the compiled library, or None when it is not built."""
    if not extension_loaded():
        return None
    import ecom2f._C

    return ecom2f._C.__file__
