"""Builds ecom2f._C: the multi-scale deformable attention op (CPU always, CUDA when possible).

Install with ``pip install --no-build-isolation -e .`` so the op compiles against the
torch that is already installed. Environment knobs:

- ``ECOM2F_BUILD_CUDA``: ``1`` forces the CUDA kernels (fails without nvcc), ``0`` skips
  them; unset builds them whenever nvcc and a CUDA build of torch are present.
- ``CUDA_HOME``: the toolkit. Defaults to ``/usr/local/cuda`` when it holds nvcc (torch's
  own guess from a ``/usr/local/bin/nvcc`` wrapper would be ``/usr/local``, which is wrong).
- ``TORCH_CUDA_ARCH_LIST``: the GPUs to compile for, honoured as given (e.g. ``9.0`` for
  a quick build for one H100). Unset or empty: ``7.5;8.0;9.0+PTX``, i.e. native code for
  Turing (T4), Ampere/Ada (one sm_80 cubin serves 8.0-8.9) and Hopper, plus compute_90
  PTX that the driver compiles on first use for newer GPUs (Blackwell B200, RTX 50xx).

In place, against whatever torch (>= 2.6) is installed: ``python setup.py build_ext
--inplace`` or ``pip install --no-build-isolation --no-deps -e .``.
"""

import glob
import os
import re
import warnings

if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0+PTX"
if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

CSRC = os.path.join("ecom2f", "ops", "csrc")


def _want_cuda() -> bool:
    forced = os.environ.get("ECOM2F_BUILD_CUDA")
    if forced == "0":
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append("the installed torch is a CPU-only build")
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        reasons.append("no nvcc was found (set CUDA_HOME to your CUDA toolkit)")
    if not reasons:
        return True
    if forced == "1":
        raise RuntimeError("ECOM2F_BUILD_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
    warnings.warn(
        "ecom2f: building the deformable-attention op for CPU only because "
        + "; ".join(reasons)
        + ". On CUDA tensors ecom2f.ops.ms_deform_attn will fall back to the slower grid_sample path.",
        stacklevel=1,
    )
    return False


def cuda_targets(arch_list: str) -> list[str]:
    """``"8.0;9.0+PTX"`` -> ``["sm_80", "sm_90", "compute_90"]``, as cuobjdump names them.

    [] when the list holds entries torch expands itself (``native``, ``Hopper``): the
    library then records no targets rather than wrong ones.
    """
    cubins, ptx = [], []
    for entry in re.split(r"[;\s]+", arch_list.strip()):
        match = re.fullmatch(r"(\d+)\.(\d+)(a?)(\+PTX)?", entry)
        if match is None:
            return []
        code = match[1] + match[2] + match[3]
        cubins.append(f"sm_{code}")
        if match[4]:
            ptx.append(f"compute_{code}")
    return sorted(set(cubins)) + sorted(set(ptx))


def _extension():
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    cpu_sources = [os.path.join(CSRC, "ms_deform_attn.cpp"), os.path.join(CSRC, "ms_deform_attn_cpu.cpp")]
    if _want_cuda():
        sources = cpu_sources + [
            os.path.join(CSRC, "ms_deform_attn_cuda.cpp"),
            os.path.join(CSRC, "ms_deform_attn_kernel.cu"),
            os.path.join(CSRC, "ms_deform_attn_kernel_vectorized.cu"),
        ]
        nvcc_flags = ["-O3", "-std=c++20", "-lineinfo"]
        targets = cuda_targets(os.environ["TORCH_CUDA_ARCH_LIST"])
        defines = ["-DECOM2F_WITH_CUDA"] + (["-DECOM2F_CUDA_TARGETS=" + ",".join(targets)] if targets else [])
        return CUDAExtension(
            "ecom2f._C",
            sources,
            extra_compile_args={"cxx": cxx_flags + defines, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
            depends=glob.glob(os.path.join(CSRC, "*.h")) + glob.glob(os.path.join(CSRC, "*.cuh")),
        )
    return CppExtension(
        "ecom2f._C",
        cpu_sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        depends=glob.glob(os.path.join(CSRC, "*.h")),
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
