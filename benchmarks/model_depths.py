"""CPU benchmarks of the early-exit model: ``python -m benchmarks.model_depths``.

1. encoder time by depth (backbone features precomputed), with analytic GFLOPs;
2. the all-exits pass (ECO-M2F step 2) against one full forward per exit;
3. gated ``predict`` throughput, batched against one image at a time;
4. the whole model with ``ecom2f.ops.ms_deform_attn`` (compiled kernel) against the
   grid_sample reference path.

Random weights (timings do not depend on values; deformable offsets are made non-zero so
sampling is not degenerate). Each case reports the median wall time and the median
process CPU time (all threads): on a shared machine the CPU time is the steadier measure
of the work done, the wall time the one a user waits. Cases of one table are timed in
interleaved rounds so that load from other processes falls on all of them alike.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from ecom2f.modeling import ModelConfig, build_model
from ecom2f.modeling.flops import all_exits_gflops, encoder_gflops, model_gflops

__all__ = ["main", "time_cases"]


def time_cases(cases: dict, runs: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
    """``{name: fn}`` -> ``{name: (median wall s, median CPU s)}``, cases interleaved per round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for _ in range(runs):
        for name, fn in cases.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in cases}


def _model(backbone: str, small: bool = False):
    torch.manual_seed(0)
    config = {"backbone": {"name": backbone}}
    if small:  # a quick smoke-test size, not a benchmark
        config.update(
            pixel_decoder={"conv_dim": 32, "mask_dim": 32, "heads": 4, "ffn_dim": 64},
            decoder={"hidden_dim": 32, "num_queries": 8, "layers": 3, "heads": 4, "ffn_dim": 64},
        )
    model = build_model(ModelConfig.model_validate(config)).eval()
    with torch.no_grad():
        for layer in model.pixel_decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.01)
            layer.self_attn.attention_weights.weight.normal_(0, 0.01)
        model.gate.head.weight.normal_(0, 0.05)  # a gate that picks different exits for different images
    return model


@torch.no_grad()
def bench_encoder_depths(model, size: int, runs: int) -> list[tuple]:
    """Rows ``(depth, wall s, CPU s, GFLOPs)`` for depths 1..L on one image."""
    _, _, inputs, _ = model._encode_inputs(torch.randn(1, 3, size, size))
    depths = list(range(1, model.num_encoder_layers + 1))
    cases = {d: (lambda d=d: model.pixel_decoder.encoder(inputs, torch.tensor([d]))) for d in depths}
    timed = time_cases(cases, runs)
    return [(d, *timed[d], encoder_gflops(model.config, size, size, d)) for d in depths]


@torch.no_grad()
def bench_all_exits(model, size: int, runs: int, batch: int) -> dict[str, tuple[float, float]]:
    pixels = torch.randn(batch, 3, size, size)
    exits = model.config.gate.exits
    return time_cases(
        {
            "separate": lambda: [model.forward_raw(pixels, depth=k) for k in exits],
            "all_exits": lambda: model.forward_all_exits(pixels, exits),
        },
        runs,
    )


@torch.no_grad()
def bench_gated_predict(model, size: int, runs: int, batch: int):
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator) for _ in range(batch)]
    tasks = ["panoptic"]
    timed = time_cases(
        {
            "batch 1": lambda: [model.predict([image], depth="gate", tasks=tasks) for image in images],
            f"batch {batch}": lambda: model.predict(images, depth="gate", tasks=tasks),
        },
        runs,
    )
    depths = [result["depth"] for result in model.predict(images, depth="gate", tasks=tasks)]
    return timed, depths


@torch.no_grad()
def bench_msda_paths(model, size: int, runs: int) -> dict[str, tuple[float, float]]:
    """Full-depth ``forward_raw`` on one image with the compiled op and with the grid_sample reference."""
    from ecom2f.modeling import deformable_attention
    from ecom2f.ops import ms_deform_attn, ms_deform_attn_reference

    pixels = torch.randn(1, 3, size, size)

    def with_op(op):
        def run():
            deformable_attention.ms_deform_attn = op
            try:
                model.forward_raw(pixels)
            finally:
                deformable_attention.ms_deform_attn = ms_deform_attn

        return run

    return time_cases({"kernel": with_op(ms_deform_attn), "grid_sample": with_op(ms_deform_attn_reference)}, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=512, help="square input size (pixels)")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per table (median reported)")
    parser.add_argument("--batch", type=int, default=4, help="images per batch for parts 2 and 3")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run, e.g. 1,3")
    parser.add_argument("--small", action="store_true", help="32-channel heads: a smoke test, not a benchmark")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {int(p) for p in args.parts.split(",")}
    model = _model(args.backbone, args.small)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"model: {args.backbone}, input {args.size}x{args.size}, median of {args.runs} rounds\n")
    if 1 in parts:
        rows = bench_encoder_depths(model, args.size, args.runs)
        deep_wall, deep_cpu = rows[-1][1], rows[-1][2]
        print("| depth | wall s | vs deepest | CPU s | vs deepest | GFLOPs | vs deepest |\n|---|---|---|---|---|---|---|")
        for depth, wall, cpu, gflops in rows:
            print(
                f"| {depth} | {wall:.3f} | {wall / deep_wall:.2f}x | {cpu:.3f} | {cpu / deep_cpu:.2f}x"
                f" | {gflops:.1f} | {gflops / rows[-1][3]:.2f}x |"
            )
        print()
    if 2 in parts:
        timed = bench_all_exits(model, args.size, args.runs, args.batch)
        exits = model.config.gate.exits
        separate_gflops = sum(model_gflops(model, args.size, args.size, k, args.batch) for k in exits)
        together_gflops = all_exits_gflops(model, args.size, args.size, exits, args.batch)
        (sw, sc), (aw, ac) = timed["separate"], timed["all_exits"]
        print(f"| batch {args.batch}, exits {exits} | wall s | CPU s | GFLOPs |\n|---|---|---|---|")
        print(f"| {len(exits)} separate forwards | {sw:.2f} | {sc:.2f} | {separate_gflops:.0f} |")
        print(
            f"| one all-exits pass | {aw:.2f} ({aw / sw:.2f}x) | {ac:.2f} ({ac / sc:.2f}x)"
            f" | {together_gflops:.0f} ({together_gflops / separate_gflops:.2f}x) |"
        )
        print()
    if 3 in parts:
        timed, depths = bench_gated_predict(model, args.size, args.runs, args.batch)
        print(f"| gated predict, {args.batch} images (depths {depths}) | images/s (wall) | images/s (CPU) |\n|---|---|---|")
        base_wall, base_cpu = timed["batch 1"]
        for name, (wall, cpu) in timed.items():
            print(
                f"| {name} | {args.batch / wall:.2f} ({base_wall / wall:.2f}x) | {args.batch / cpu:.2f} ({base_cpu / cpu:.2f}x) |"
            )
        print()
    if 4 in parts:
        timed = bench_msda_paths(model, args.size, args.runs)
        (kw, kc), (gw, gc) = timed["kernel"], timed["grid_sample"]
        print("| whole model, 1 image, depth 6 | wall s | CPU s |\n|---|---|---|")
        print(f"| ecom2f.ops kernel | {kw:.2f} | {kc:.2f} |")
        print(f"| grid_sample reference | {gw:.2f} ({gw / kw:.2f}x) | {gc:.2f} ({gc / kc:.2f}x) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
