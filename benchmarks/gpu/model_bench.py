"""The early-exit Mask2Former on the GPU: images/s by encoder depth, and the encoder's time by depth.

``python -m benchmarks.gpu.model_bench [--json FILE] [--runs 20] [--smoke]``: Mask2Former R50
(``configs/coco_panoptic_r50.yaml``'s model, random weights with non-zero deformable offsets),
inference under bf16 autocast on 800x1333 images (padded to 800x1344, a multiple of 32, as
Mask2Former pads), batch 1 and 8:

1. ``forward_raw`` at each fixed encoder depth 1..6 and the all-exits pass (ECO-M2F step 2:
   the encoder once, the decoder after each gate exit): median ms per batch, images/s and peak
   memory;
2. the encoder alone at each depth, batch 8 (the backbone and input projections run once,
   outside the timing), against depth 6, with the analytic FLOP ratio beside it: the
   depth-3 / depth-6 ratio is the saving an early exit buys in the encoder.

``--smoke`` runs the demo model on 64x64 images (on the CPU without a GPU), to check the code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# The project's names this file uses, in one place.
from ecom2f.config import load_config
from ecom2f.modeling import build_model
from ecom2f.modeling.flops import encoder_gflops

from benchmarks.gpu.tables import BenchTables
from benchmarks.gpu.timing import median_ms

REPO = Path(__file__).resolve().parents[2]
R50 = (REPO / "configs" / "coco_panoptic_r50.yaml", ["model.backbone.weights=null", "parent.init.mode=scratch"])
DEMO = (REPO / "configs" / "demo_cpu.yaml", [])


def random_model(config_file, overrides, device):
    """The config's model with seeded random weights; the deformable offsets and attention
    logits made non-zero (their default zero init samples only the reference points)."""
    torch.manual_seed(0)
    model = build_model(load_config(config_file, overrides).model).eval()
    with torch.no_grad():
        for layer in model.pixel_decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.02)
            layer.self_attn.attention_weights.weight.normal_(0, 0.02)
    return model.to(device)


def _peak_gib(fn, device) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


@torch.no_grad()
def bench_depths(tables, model, size, batches, device, runs, warmup) -> None:
    exits = list(model.config.gate.exits)
    rows = tables.table(
        f"Images/s by encoder depth, {size[0]}x{size[1]}, bf16 autocast, no grad",
        ["batch", "depth", "ms per batch", "images/s", "speed-up vs depth 6", "peak GiB"],
    )
    depth_max = model.num_encoder_layers
    for batch in batches:
        pixels = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch)).to(device)
        cases = {f"{d}": (lambda d=d: model.forward_raw(pixels, depth=d)) for d in range(1, depth_max + 1)}
        cases[f"all exits {exits}"] = lambda: model.forward_all_exits(pixels, exits)
        deepest = None
        for label, fn in sorted(cases.items(), key=lambda item: item[0] != str(depth_max)):  # the deepest first
            with torch.autocast(device, dtype=torch.bfloat16):
                ms = median_ms(lambda i: fn(), device, runs, warmup)
                peak = _peak_gib(fn, device)
            deepest = deepest or ms
            tables.row(rows, batch, label, ms, batch / (ms / 1e3), f"{deepest / ms:.2f}x", peak)
        del pixels


@torch.no_grad()
def bench_encoder(tables, model, size, batch, device, runs, warmup) -> None:
    pixels = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(7)).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        _, _, inputs, _ = model._encode_inputs(pixels, gate=False)
    depth_max = model.num_encoder_layers
    rows = tables.table(
        f"Encoder alone by depth, batch {batch}, {size[0]}x{size[1]}, bf16 autocast",
        ["depth", "encoder ms", "time vs depth 6", "GFLOPs", "FLOPs vs depth 6"],
        notes=["The depth-3 row's ratios: the encoder time an exit after 3 of 6 layers takes."],
    )
    times = {}
    for depth in [depth_max, *range(1, depth_max)]:
        with torch.autocast(device, dtype=torch.bfloat16):
            times[depth] = median_ms(lambda i, d=depth: model.pixel_decoder.encoder(inputs, [d] * batch),
                                     device, runs, warmup)
    full = encoder_gflops(model.config, *size, depth_max, batch)
    for depth in range(1, depth_max + 1):
        flops = encoder_gflops(model.config, *size, depth, batch)
        tables.row(rows, depth, times[depth], f"{times[depth] / times[depth_max]:.2f}", flops, f"{flops / full:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the tables to this JSON file (for scripts/gpu/report.py)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes for table 1")
    parser.add_argument("--smoke", action="store_true", help="the demo model on 64x64, 1 run; on the CPU without a GPU")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        parser.error("no CUDA device: this benchmark is for GPUs (--smoke runs a tiny CPU problem)")
    batches = [int(b) for b in args.batches.split(",")]
    if args.smoke:
        (config_file, overrides), size, batches, runs, warmup = DEMO, (64, 64), [1], 1, 0
    else:
        (config_file, overrides), size, runs, warmup = R50, (800, 1344), args.runs, args.warmup
    model = random_model(config_file, overrides, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "the CPU"
    tables = BenchTables(args.json, "model", f"Early-exit Mask2Former ({model.config.backbone.name}) on {name}")
    tables.note(f"torch {torch.__version__}; {config_file.name} model, random weights; median of {runs} runs "
                f"after {warmup} warm-ups; images {size[0]}x{size[1]} (800x1333 pads to 800x1344, as Mask2Former "
                "pads to a multiple of 32).")
    bench_depths(tables, model, size, batches, device, runs, warmup)
    bench_encoder(tables, model, size, max(batches), device, runs, warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
