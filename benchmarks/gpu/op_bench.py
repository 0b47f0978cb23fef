"""The deformable-attention op on the GPU against the grid_sample reference.

``python -m benchmarks.gpu.op_bench [--json FILE] [--runs 20] [--smoke]``: for each problem
size and dtype, the median time of a forward and of a forward+backward (CUDA events, after
warm-up), of the compiled kernel (``ecom2f.ops.ms_deform_attn``; ``ECOM2F_MSDA_KERNEL`` selects
a variant where the op has one) and of the grid_sample reference; the extra memory each
allocates; and the kernel's achieved bandwidth: the fewest bytes the pass must move through
device memory (each input read once, each output written once) over its time, against the
card's nominal peak and a measured device-to-device copy. The bilinear gathers themselves
(4 corners x D values per sample) are served mostly from the caches; their rate is shown too.

Inputs are random (never zeros): locations spread over the map and 10% beyond it, softmax
weights. Small problems rotate over several input sets so that they do not time the L2 cache.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

# The project's names this file uses, in one place.
from ecom2f.ops import has_kernel, ms_deform_attn, ms_deform_attn_reference

from benchmarks.gpu.hardware import peak_bandwidth_gbs
from benchmarks.gpu.tables import BenchTables
from benchmarks.gpu.timing import copy_bandwidth_gbs, median_ms, peak_extra_mib

HEADS, HEAD_DIM, POINTS = 8, 32, 4
# name -> (batch, level shapes of strides 8, 16, 32): Mask2Former's inference size as
# benchmarks/ops_msda.py (512x512), LSJ training crops (1024x1024) and COCO evaluation (800x1333).
CASES = {
    "512x512 N=2": (2, [(64, 64), (32, 32), (16, 16)]),
    "1024x1024 N=2": (2, [(128, 128), (64, 64), (32, 32)]),
    "1024x1024 N=8": (8, [(128, 128), (64, 64), (32, 32)]),
    "800x1333 N=8": (8, [(100, 167), (50, 84), (25, 42)]),
}
SMOKE_CASES = {"smoke 64x64 N=1": (1, [(8, 8), (4, 4), (2, 2)])}
# (label, value dtype, locations/weights dtype): fp32, and the layout autocast gives the op.
DTYPES = [("fp32", torch.float32, torch.float32), ("bf16 value, fp32 locations", torch.bfloat16, torch.float32)]


def make_inputs(batch, levels, value_dtype, geometry_dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    tokens, count = int(sizes.sum()), len(levels)
    value = torch.randn(batch, tokens, HEADS, HEAD_DIM, generator=generator)
    locations = torch.rand(batch, tokens, HEADS, count, POINTS, 2, generator=generator) * 1.2 - 0.1
    weights = torch.rand(batch, tokens, HEADS, count * POINTS, generator=generator).softmax(-1)
    weights = weights.view(batch, tokens, HEADS, count, POINTS)
    floats = [value.to(device, value_dtype), locations.to(device, geometry_dtype), weights.to(device, geometry_dtype)]
    return floats[0], shapes.to(device), starts.to(device), floats[1], floats[2]


def byte_counts(batch, levels, value_dtype, geometry_dtype) -> dict[str, float]:
    """Fewest bytes through device memory per pass, and the bytes the bilinear gathers read."""
    tokens = sum(h * w for h, w in levels)
    v, g = torch.finfo(value_dtype).bits // 8, torch.finfo(geometry_dtype).bits // 8
    value = batch * tokens * HEADS * HEAD_DIM * v  # also the output's and grad_value's size (Q = S)
    samples = batch * tokens * HEADS * len(levels) * POINTS
    geometry = samples * 3 * g  # locations (x, y) and weights
    forward = value + geometry + value  # read value, locations, weights; write the output
    backward = value + value + geometry + value + geometry  # read grad_out, value, geometry; write the grads
    return {"forward": forward, "forward+backward": forward + backward, "gathers": samples * 4 * HEAD_DIM * v}


def _pass(fn, inputs, backward, grad_out=None):
    value, shapes, starts, locations, weights = inputs
    if not backward:
        with torch.no_grad():
            return fn(value, shapes, starts, locations, weights)
    out = fn(value, shapes, starts, locations, weights)
    return torch.autograd.grad(out, (value, locations, weights), grad_out)


def kernel(value, shapes, starts, locations, weights):
    return ms_deform_attn(value, shapes, starts, locations, weights, check_layout=False)


def reference(value, shapes, starts, locations, weights):
    return ms_deform_attn_reference(value, shapes, starts, locations, weights)


def kernel_that_runs(inputs, grad_out, variant: str) -> str:
    """Which kernel ``variant`` runs on these inputs: the op falls back to the default kernel
    where the vectorized one does not apply, and ``vectorized-strict`` says why instead."""
    if variant in ("default", "vectorized-strict"):
        return variant
    os.environ["ECOM2F_MSDA_KERNEL"] = "vectorized-strict"
    try:
        _pass(kernel, inputs, True, grad_out)
        return variant
    except RuntimeError as error:
        reason = str(error).split("does not handle this call:", 1)[-1].split("(N=", 1)[0].strip()
        return f"default ({variant} n/a: {reason[:80]})"
    finally:
        os.environ["ECOM2F_MSDA_KERNEL"] = variant


def input_sets(batch, levels, value_dtype, geometry_dtype, device, l2_bytes):
    """Enough independent input sets (with grad_out) to span twice the L2 cache, at most 8."""
    first = make_inputs(batch, levels, value_dtype, geometry_dtype, device, seed=0)
    per_set = sum(t.numel() * t.element_size() for t in first) * 2  # + grad_out and outputs
    count = max(1, min(8, math.ceil(2 * l2_bytes / per_set)))
    sets = [first] + [make_inputs(batch, levels, value_dtype, geometry_dtype, device, seed=s) for s in range(1, count)]
    for inputs in sets:
        for t in (inputs[0], inputs[3], inputs[4]):
            t.requires_grad_(True)
    grads = [torch.randn(batch, inputs[0].shape[1], HEADS * HEAD_DIM, device=device).to(value_dtype) for inputs in sets]
    return sets, grads


def run(tables: BenchTables, cases: dict, device: str, runs: int, warmup: int) -> None:
    variant = os.environ.get("ECOM2F_MSDA_KERNEL") or "default"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak, source = peak_bandwidth_gbs(name) if device == "cuda" else (None, "n/a")
    copy = copy_bandwidth_gbs(device)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if device == "cuda" else 32 * 2**20
    tables.note(f"{name}, torch {torch.__version__}; kernel variant (ECOM2F_MSDA_KERNEL): {variant}; "
                f"H={HEADS}, D={HEAD_DIM}, P={POINTS}, Q=S; median of {runs} runs after {warmup} warm-ups.")
    if peak:
        tables.note(f"Peak memory bandwidth {peak:.0f} GB/s ({source}); device-to-device copy measured at "
                    f"{copy:.0f} GB/s (read + written).")
    rows = tables.table(
        "Deformable attention: kernel vs grid_sample reference",
        ["case", "dtype", "pass", "kernel", "kernel ms", "grid_sample ms", "speed-up", "kernel extra MiB",
         "grid_sample extra MiB", "kernel GB/s (fewest bytes)", "% of peak", "gather GB/s"],
        notes=["GB/s: the fewest bytes the pass must move (inputs read once, outputs written once) over the "
               "kernel's time; gather GB/s: 4 corners x D values per sample, mostly from the caches."],
    )
    for case, (batch, levels) in cases.items():
        for label, value_dtype, geometry_dtype in DTYPES:
            sets, grads = input_sets(batch, levels, value_dtype, geometry_dtype, device, l2)
            counts = byte_counts(batch, levels, value_dtype, geometry_dtype)
            which = kernel_that_runs(sets[0], grads[0], variant) if device == "cuda" else "cpu"
            for backward in (False, True):
                step = "forward+backward" if backward else "forward"
                times, memory = {}, {}
                for impl, fn in (("kernel", kernel), ("reference", reference)):
                    times[impl] = median_ms(lambda i: _pass(fn, sets[i % len(sets)], backward, grads[i % len(sets)]),
                                            device, runs, warmup)
                    memory[impl] = peak_extra_mib(lambda: _pass(fn, sets[0], backward, grads[0]), device)
                rate = counts[step] / (times["kernel"] / 1e3) / 1e9
                gathers = counts["gathers"] * (3 if backward else 1) / (times["kernel"] / 1e3) / 1e9
                tables.row(rows, case, label, step, which, times["kernel"], times["reference"],
                           f"{times['reference'] / times['kernel']:.1f}x", memory["kernel"], memory["reference"],
                           rate, f"{100 * rate / peak:.0f}%" if peak else None, gathers)
            del sets, grads
            if device == "cuda":
                torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the tables to this JSON file (for scripts/gpu/report.py)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="one tiny problem, 2 runs; on the CPU without a GPU")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        parser.error("no CUDA device: this benchmark is for GPUs (--smoke runs a tiny CPU problem)")
    if not has_kernel(device):
        parser.error(f"the compiled op has no {device} kernel in this build: build it first (scripts/gpu_check.sh)")
    cases, runs, warmup = (SMOKE_CASES, 2, 1) if args.smoke else (CASES, args.runs, args.warmup)
    tables = BenchTables(args.json, "op", "Deformable attention on " + ("the GPU" if device == "cuda" else "the CPU"))
    run(tables, cases, device, runs, warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
