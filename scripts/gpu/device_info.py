"""What the GPU check ran on: the GPU, its driver, torch, CUDA, nvcc and the card's peak bandwidth.

``python3 scripts/gpu/device_info.py --json FILE`` writes a JSON object (and prints it);
``--arch`` prints only the local GPU's compute capability as ``TORCH_CUDA_ARCH_LIST`` wants
it (``9.0``) and exits 1 when torch sees no CUDA device. Works without a GPU, with fewer fields.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for benchmarks.gpu

def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def collect() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    nvcc = _run(["nvcc", "--version"])
    info["nvcc"] = nvcc.splitlines()[-1] if nvcc else None
    info["nvcc_path"] = shutil.which("nvcc")
    info["compute_sanitizer"] = shutil.which("compute-sanitizer")
    if not torch.cuda.is_available():
        return info
    props = torch.cuda.get_device_properties(0)
    info.update(
        gpu=props.name,
        capability=f"{props.major}.{props.minor}",
        multiprocessors=props.multi_processor_count,
        memory_gib=round(props.total_memory / 2**30, 1),
        l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
        bf16_supported=torch.cuda.is_bf16_supported(),
        gpu_count=torch.cuda.device_count(),
    )
    from benchmarks.gpu.hardware import datasheet_bandwidth, nvml_bandwidth

    info.update(nvml_bandwidth())
    if "driver" not in info:
        info["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    info["peak_bandwidth_gbs_datasheet"] = datasheet_bandwidth(props.name)
    info["peak_bandwidth_gbs"] = info.get("peak_bandwidth_gbs_nvml") or info["peak_bandwidth_gbs_datasheet"]
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the facts to this file")
    parser.add_argument("--arch", action="store_true", help="print only the GPU's compute capability, e.g. 9.0")
    args = parser.parse_args(argv)
    if args.arch:
        import torch

        if not torch.cuda.is_available():
            print("device_info.py: torch sees no CUDA device", file=sys.stderr)
            return 1
        major, minor = torch.cuda.get_device_capability(0)
        print(f"{major}.{minor}")
        return 0
    info = collect()
    text = json.dumps(info, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
