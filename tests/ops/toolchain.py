"""What the build machine offers for the CUDA kernels: nvcc, cuobjdump, and what a library holds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch


def cuda_toolkit_present() -> bool:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return torch.version.cuda is not None and Path(home, "bin", "nvcc").exists()


def cuobjdump() -> str | None:
    """The cuobjdump of triton's wheel (the toolkit here lacks one), else the toolkit's."""
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else shutil.which("cuobjdump")


build_with_cuda = pytest.mark.skipif(
    not cuda_toolkit_present() or os.environ.get("ECOM2F_BUILD_CUDA") == "0",
    reason="no CUDA toolkit (nvcc) and CUDA build of torch here, so the CUDA kernels were not built",
)


def gpu_code(library: str) -> dict[str, set[str]]:
    """``{"sm_80", ...}`` cubins and PTX of each translation unit, as nvcc names them.

    cuobjdump lists ``kernel.sm_80.cubin`` (ELF) and ``kernel.sm_90.ptx`` (PTX); the PTX is
    reported here as ``compute_90``, the name nvcc and setup.py give it.
    """
    tool = cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (it ships with triton's wheel or the CUDA toolkit)")
    code: dict[str, set[str]] = {}
    for flag, pattern in (("--list-elf", r"(\S+)\.(sm_\w+)\.cubin"), ("--list-ptx", r"(\S+)\.sm_(\w+)\.ptx")):
        result = subprocess.run([tool, flag, library], capture_output=True, text=True)
        # cuobjdump exits non-zero when the library holds nothing of the kind asked for.
        for unit, target in re.findall(pattern, result.stdout):
            code.setdefault(unit, set()).add(target if flag == "--list-elf" else f"compute_{target}")
    return code
