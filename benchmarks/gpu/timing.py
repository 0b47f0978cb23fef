"""Median times on the GPU (CUDA events) or the CPU (wall clock), after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[int], object], device: str, runs: int, warmup: int) -> float:
    """Median milliseconds of ``fn(i)`` over ``runs`` calls after ``warmup`` calls.

    ``i`` counts the calls, so ``fn`` can rotate over several input sets (inputs that fit in
    the L2 cache would otherwise time the cache). On CUDA each call is timed with events after
    the queue has drained, so the time includes launching the call's kernels, as a caller
    waits for it.
    """
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(warmup + i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(warmup + i)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mib(fn: Callable[[], object], device: str) -> float | None:
    """CUDA memory allocated by one call beyond what was allocated before it (None on the CPU)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def copy_bandwidth_gbs(device: str, gib: float = 2.0, runs: int = 10) -> float | None:
    """Device-to-device copy rate, bytes read plus written: the practical memory ceiling."""
    if device != "cuda":
        return None
    src = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda i: dst.copy_(src), "cuda", runs, warmup=2)
    del src, dst
    return 2 * gib * 2**30 / (ms / 1e3) / 1e9
