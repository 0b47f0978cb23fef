"""Building the extension where no CUDA toolkit exists: CPU kernels and one clear warning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_build_without_nvcc_is_cpu_only_with_one_warning(tmp_path):
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "no-cuda-here"), ECOM2F_BUILD_CUDA="")
    env.pop("ECOM2F_BUILD_CUDA")
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("building the deformable-attention op for CPU only") == 1, output[-3000:]
    assert "no nvcc was found (set CUDA_HOME to your CUDA toolkit)" in output
    (library,) = (tmp_path / "lib" / "ecom2f").glob("_C*.so")
    # The CPU-only library has no CUDA kernels inside, and it loads and runs.
    assert b"ms_deform_attn_kernel.sm_" not in library.read_bytes()
    probe = (
        "import torch, importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('ecom2f._C', {str(library)!r});"
        "importlib.util.module_from_spec(spec); spec.loader.exec_module(importlib.util.module_from_spec(spec));"
        "print(torch._C._dispatch_has_kernel_for_dispatch_key('ecom2f::ms_deform_attn', 'CPU'),"
        " torch._C._dispatch_has_kernel_for_dispatch_key('ecom2f::ms_deform_attn', 'CUDA'))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.split() == ["True", "False"], loaded.stderr[-2000:]


def test_forcing_cuda_without_a_toolkit_fails_clearly(tmp_path):
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "no-cuda-here"), ECOM2F_BUILD_CUDA="1")
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "ECOM2F_BUILD_CUDA=1 but the CUDA kernels cannot be built: no nvcc was found" in result.stderr
