"""Building the extension: CPU-only without a toolkit (one clear warning), and the GPU code
a CUDA build embeds (cubins for the listed archs, PTX for later GPUs)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import ecom2f.ops as ops
from tests.conftest import REPO_ROOT
from tests.ops.toolchain import build_with_cuda, gpu_code

KERNEL_UNITS = {"ms_deform_attn_kernel", "ms_deform_attn_kernel_vectorized"}


def _setup_default_arch_list() -> str:
    """setup.py's DEFAULT_CUDA_ARCH_LIST, read without running setup.py."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [
            "DEFAULT_CUDA_ARCH_LIST"
        ]:
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no DEFAULT_CUDA_ARCH_LIST")


def _expected_targets(arch_list: str) -> set[str]:
    """"7.5;9.0+PTX" -> {"sm_75", "sm_90", "compute_90"} (written apart from setup.py's parser)."""
    targets = set()
    for entry in arch_list.replace(" ", ";").split(";"):
        version, _, ptx = entry.partition("+")
        code = version.replace(".", "")
        targets.add(f"sm_{code}")
        if ptx == "PTX":
            targets.add(f"compute_{code}")
    return targets


def _build(tmp_path, env_updates: dict[str, str | None], timeout=900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key, val in env_updates.items():
        if val is None:
            env.pop(key, None)
        else:
            env[key] = val
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _recorded_targets(library) -> str:
    """The cuda_targets attribute of a freshly built library, loaded in a child process."""
    probe = (
        "import torch, importlib.util;"
        f"spec = importlib.util.spec_from_file_location('ecom2f._C', {str(library)!r});"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module);"
        "print(repr(module.cuda_targets))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    return ast.literal_eval(loaded.stdout.strip())


def test_default_arch_list_ends_with_ptx_for_its_newest_arch():
    # Without PTX, a GPU newer than every listed arch (B200, RTX 50xx) gets "no kernel
    # image" at the first launch although the op reports a CUDA kernel.
    entries = _setup_default_arch_list().split(";")
    versions = [tuple(int(x) for x in e.split("+")[0].split(".")) for e in entries]
    assert entries[-1].endswith("+PTX") and versions[-1] == max(versions), entries
    assert "7.5" in entries, "T4 (sm_75) is older than the PTX and needs its own cubin"


@build_with_cuda
def test_installed_library_holds_exactly_the_targets_it_records():
    # Holds for any arch list (the GPU check builds for its one GPU only).
    recorded = ops.cuda_targets()
    if recorded is None:
        pytest.skip("built with an arch list torch expands itself (e.g. 'native'): nothing recorded")
    code = gpu_code(ops.library_path())
    assert set(code) == KERNEL_UNITS, code
    for unit, targets in code.items():
        assert targets == set(recorded), (unit, targets, recorded)


@build_with_cuda
def test_default_build_embeds_ptx_for_later_gpus():
    default_targets = _expected_targets(_setup_default_arch_list())
    recorded = ops.cuda_targets()
    if recorded is None or set(recorded) != default_targets:
        pytest.skip(f"the installed library was built with an explicit TORCH_CUDA_ARCH_LIST ({recorded})")
    for unit, targets in gpu_code(ops.library_path()).items():
        assert "compute_90" in targets and {"sm_75", "sm_80", "sm_90"} <= targets, (unit, targets)


@pytest.mark.slow
@build_with_cuda
def test_explicit_arch_list_is_honoured(tmp_path):
    # What the GPU check does: one arch, the local GPU's, and nothing else.
    result = _build(tmp_path, {"TORCH_CUDA_ARCH_LIST": "8.6", "ECOM2F_BUILD_CUDA": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (library,) = (tmp_path / "lib" / "ecom2f").glob("_C*.so")
    code = gpu_code(str(library))
    assert code == {unit: {"sm_86"} for unit in KERNEL_UNITS}, code
    assert _recorded_targets(library) == "sm_86"


@pytest.mark.slow
def test_build_without_nvcc_is_cpu_only_with_one_warning(tmp_path):
    result = _build(tmp_path, {"CUDA_HOME": str(tmp_path / "no-cuda-here"), "ECOM2F_BUILD_CUDA": None}, timeout=600)
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
    assert _recorded_targets(library) == ""


def test_forcing_cuda_without_a_toolkit_fails_clearly(tmp_path):
    result = _build(tmp_path, {"CUDA_HOME": str(tmp_path / "no-cuda-here"), "ECOM2F_BUILD_CUDA": "1"}, timeout=300)
    assert result.returncode != 0
    assert "ECOM2F_BUILD_CUDA=1 but the CUDA kernels cannot be built: no nvcc was found" in result.stderr
