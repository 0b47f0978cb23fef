"""Benchmark of the deformable-attention kernel against the grid_sample reference.

``python -m benchmarks.ops_msda [--device cpu|cuda] [--runs 10] [--kernel default|vectorized-strict]``
prints a Markdown table: median time of forward and forward+backward after warm-up, peak
extra memory, and the kernel's speed-up, at Mask2Former's inference size and at COCO
training size (1024x1024). ``--kernel`` picks the CUDA kernel (it sets
``ECOM2F_MSDA_KERNEL``); run once per kernel to compare them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch

from benchmarks.machine import cpu_description
from ecom2f.ops import extension_loaded, has_kernel, ms_deform_attn_reference

# name -> (batch, level shapes); H=8 heads of D=32, P=4 points, queries = all tokens.
CASES = {
    "Mask2Former (levels 64²,32²,16²)": (2, [(64, 64), (32, 32), (16, 16)]),
    "COCO train 1024² (levels 128²,64²,32²)": (2, [(128, 128), (64, 64), (32, 32)]),
}
HEADS, HEAD_DIM, POINTS = 8, 32, 4

# Peak memory bandwidth (GB/s) of cards we know, to put the achieved number in context.
CARD_BANDWIDTH_GBS = {"H100": 3352.0, "H200": 4800.0, "A100": 2039.0, "A10G": 600.0, "L4": 300.0}


@dataclass
class Measurement:
    median_ms: float
    peak_mb: float


def make_problem(batch, level_shapes, dtype, device, seed=0):
    """Random inputs (never zeros): locations spread over the map, softmax weights."""
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(level_shapes, dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    tokens = int(sizes.sum())
    levels = len(level_shapes)
    value = torch.randn(batch, tokens, HEADS, HEAD_DIM, generator=generator)
    locations = torch.rand(batch, tokens, HEADS, levels, POINTS, 2, generator=generator)
    weights = torch.rand(batch, tokens, HEADS, levels * POINTS, generator=generator).softmax(-1)
    weights = weights.view(batch, tokens, HEADS, levels, POINTS)
    floats = [t.to(device=device, dtype=dtype) for t in (value, locations, weights)]
    return floats[0], shapes.to(device), starts.to(device), floats[1], floats[2]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run_once(fn, inputs, backward):
    value, shapes, starts, locations, weights = inputs
    if backward:
        for t in (value, locations, weights):
            t.grad = None
        out = fn(value, shapes, starts, locations, weights)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            fn(value, shapes, starts, locations, weights)


def _peak_extra_mb(fn, inputs, backward, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _run_once(fn, inputs, backward)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    # On the CPU, replay the allocations and frees torch recorded during one run (each
    # event's own, children excluded) in time order, and take the running peak.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        _run_once(fn, inputs, backward)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def measure(fn, inputs, backward, device, runs, warmup=2) -> Measurement:
    if backward:
        for t in (inputs[0], inputs[3], inputs[4]):
            t.requires_grad_(True)
    for _ in range(warmup):
        _run_once(fn, inputs, backward)
    times = []
    for _ in range(runs):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _run_once(fn, inputs, backward)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            _run_once(fn, inputs, backward)
            times.append((time.perf_counter() - t0) * 1e3)
    return Measurement(statistics.median(times), _peak_extra_mb(fn, inputs, backward, device))


def forward_bytes(batch, level_shapes, dtype) -> int:
    """Bytes a forward must move at least: 4 corner reads of D values per sample, inputs, output."""
    tokens = sum(h * w for h, w in level_shapes)
    size = torch.finfo(dtype).bits // 8
    samples = batch * tokens * HEADS * len(level_shapes) * POINTS
    return size * (samples * (4 * HEAD_DIM + 3) + 2 * batch * tokens * HEADS * HEAD_DIM)


def machine_description(device) -> str:
    if device == "cuda":
        kernel = os.environ.get("ECOM2F_MSDA_KERNEL") or "default"
        return (
            f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda}), "
            f"CUDA kernel {kernel}"
        )
    return f"{cpu_description()}, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def run(device: str, runs: int, dtypes: list[torch.dtype]) -> str:
    lines = [
        f"Machine: {machine_description(device)}",
        "",
        "| case | dtype | pass | reference ms | kernel ms | speed-up | reference peak MB | kernel peak MB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    bandwidth_lines = []
    for case, (batch, level_shapes) in CASES.items():
        for dtype in dtypes:
            inputs = make_problem(batch, level_shapes, dtype, device)
            for backward in (False, True):
                ref = measure(ms_deform_attn_reference, inputs, backward, device, runs)
                ker = measure(torch.ops.ecom2f.ms_deform_attn, inputs, backward, device, runs)
                name = "forward+backward" if backward else "forward"
                dtype_name = str(dtype).replace("torch.", "")
                lines.append(
                    f"| {case} | {dtype_name} | {name} | {ref.median_ms:.1f} | {ker.median_ms:.1f} | "
                    f"{ref.median_ms / ker.median_ms:.1f}x | {ref.peak_mb:.0f} | {ker.peak_mb:.0f} |"
                )
                print(lines[-1], flush=True)
                if device == "cuda" and not backward:
                    achieved = forward_bytes(batch, level_shapes, dtype) / (ker.median_ms / 1e3) / 1e9
                    card = next((k for k in CARD_BANDWIDTH_GBS if k in torch.cuda.get_device_name()), None)
                    peak = f"{CARD_BANDWIDTH_GBS[card]:.0f}" if card else "unknown"
                    bandwidth_lines.append(
                        f"| {case} | {dtype_name} | {achieved:.0f} | {peak} |"
                    )
    if bandwidth_lines:
        lines += ["", "| case | dtype | forward GB/s (min. bytes moved) | card peak GB/s |", "|---|---|---:|---:|"]
        lines += bandwidth_lines
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per measurement (median reported)")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    parser.add_argument(
        "--kernel", choices=["default", "vectorized", "vectorized-strict"],
        help="CUDA kernel to time (sets ECOM2F_MSDA_KERNEL; default: leave it as it is)",
    )
    args = parser.parse_args(argv)
    if args.kernel is not None:
        os.environ["ECOM2F_MSDA_KERNEL"] = args.kernel
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if not extension_loaded() or not has_kernel(args.device):
        parser.error(f"the compiled op has no {args.device} kernel in this build: nothing to benchmark")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    dtypes = [torch.float32] if args.device == "cpu" else [torch.float32, torch.bfloat16]
    print(f"Deformable attention: H={HEADS}, D={HEAD_DIM}, P={POINTS}, Q=S, median of {args.runs} runs", flush=True)
    table = run(args.device, args.runs, dtypes)
    print()
    print(table)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            f.write(table + "\n")
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
