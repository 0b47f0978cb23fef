"""Gated inference against fixed depths: ``python -m benchmarks.inference``.

Times :class:`ecom2f.steps.predict.Predictor` (the library path of ``ecom2f predict`` and
``ecom2f serve``: the image at the test size, the network grouped by chosen depth, Mask2Former's
post-processing back to the image's size) on R50 at COCO's test size (800 x 1333), at fixed depths
1..6 and gated at three budgets, at batch 1 and batch 8, and prints images/s next to the analytic
whole-model GFLOP ratio to depth 6, plus the encoder's own time ratio next to its depth ratio.

The gates are planted (random weights hold no trained gate): each budget's gate is fitted to the
benchmark images' own pooled gate features so that it sends them to depths averaging 3, 4 and 5
layers (e.g. 2, 3, 4, 2, ... for budget 3). A real gate decides differently per image, but the cost
of a batch depends only on the depths it chose, which is what is measured here.

Cases are timed in interleaved rounds (load from other processes falls on all alike); each reports
the median wall time and the median process CPU time (all threads). Phases (trunk, encoder,
decoder, post-processing) come from the Predictor's clock: the device clock (wall time, after a
CUDA synchronise), or with ``--cpu-clock`` this process's CPU time. On a shared CPU, ``--threads 1
--cpu-clock`` measures the work itself: a single thread's CPU time does not count the time other
processes hold the cores, nor OpenMP threads spinning at barriers while a sibling waits for a core.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from ecom2f.modeling import ModelConfig, build_model
from ecom2f.modeling.flops import (
    backbone_flops,
    decoder_flops,
    encoder_gflops,
    fpn_flops,
    input_projection_flops,
    lateral_flops,
)
from ecom2f.modeling.gate import Gate
from ecom2f.steps.predict.predictor import Predictor

__all__ = ["main", "planted_depths"]

BUDGETS = (3, 4, 5)
TOLERANCE = 0.10


def planted_depths(budget: int, count: int, exits: list[int]) -> list[int]:
    """``count`` depths cycling budget-1, budget, budget+1 (clipped to the exits): mean ~ budget."""
    pattern = [budget - 1, budget, budget + 1]
    return [min(max(pattern[i % 3], exits[0]), exits[-1]) for i in range(count)]


def _model(backbone: str, small: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {"backbone": {"name": backbone}}
    if small:  # a smoke-test size, not a benchmark
        config.update(pixel_decoder={"conv_dim": 32, "mask_dim": 32, "heads": 4, "ffn_dim": 64},
                      decoder={"hidden_dim": 32, "num_queries": 8, "layers": 3, "heads": 4, "ffn_dim": 64})
    model = build_model(ModelConfig.model_validate(config)).eval()
    with torch.no_grad():
        for layer in model.pixel_decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.01)
            layer.self_attn.attention_weights.weight.normal_(0, 0.01)
    return model


def _images(count: int, height: int, width: int) -> list[torch.Tensor]:
    """Smooth random scenes (blobs and noise) so that images differ in their gate features."""
    generator = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for _ in range(count):
        image = np.full((height, width, 3), generator.uniform(0, 255, 3))
        for _ in range(6):
            cy, cx, radius = generator.uniform(0, height), generator.uniform(0, width), generator.uniform(40, 300)
            image[((y - cy) ** 2 + (x - cx) ** 2) < radius**2] = generator.uniform(0, 255, 3)
        image += generator.normal(0, 10, image.shape)
        images.append(torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous())
    return images


@torch.no_grad()
def _planted_gate(model, images: list[torch.Tensor], depths: list[int]) -> Gate:
    """A gate of the model's configuration that sends ``images[i]`` to ``depths[i]`` (least squares on
    one-hot targets over the images' pooled features, exact while images are fewer than features)."""
    from ecom2f.modeling.preprocessing import normalize_and_pad

    config = model.config
    features = []
    for image in images:
        pixels, sizes = normalize_and_pad([image.to(model.device)], config.pixel_mean, config.pixel_std,
                                          config.size_divisibility)
        features.append(model.forward_trunk(pixels, sizes).gate_features.double().cpu())
    exits = config.gate.exits
    targets = torch.full((len(images), len(exits)), -10.0, dtype=torch.float64)
    for row, depth in enumerate(depths):
        targets[row, exits.index(depth)] = 10.0
    inputs = torch.cat([torch.cat(features), torch.ones(len(images), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.pinv(inputs) @ targets
    gate = Gate(config.pixel_decoder.conv_dim, config.gate).eval()
    gate.head.weight.copy_(solution[:-1].T.float())
    gate.head.bias.copy_(solution[-1].float())
    return gate


def _time_cases(cases: dict, runs: int) -> dict[str, dict]:
    """``{name: fn -> predictions}`` -> per case the median wall and CPU seconds, and the phases and
    depths of the last round; cases interleaved per round."""
    walls = {name: [] for name in cases}
    cpus = {name: [] for name in cases}
    last = {}
    for _ in range(runs):
        for name, fn in cases.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            last[name] = fn()
            walls[name].append(time.perf_counter() - start_wall)
            cpus[name].append(time.process_time() - start_cpu)
    out = {}
    for name in cases:
        predictions = last[name]
        phases = {key: sum(p.phases[key] for p in predictions) for key in predictions[0].phases}
        out[name] = {"wall": statistics.median(walls[name]), "cpu": statistics.median(cpus[name]),
                     "phases": phases, "depths": [p.depth for p in predictions], "images": len(predictions),
                     "gflops": sum(p.total_gflops for p in predictions)}
    return out


def _run_batches(predictor: Predictor, images, batch: int, **choice):
    predictions = []
    for start in range(0, len(images), batch):
        predictions += predictor.predict(images[start:start + batch], **choice)
    return predictions


def _phase_gflops(model, height: int, width: int, depth: int) -> dict[str, float]:
    """Analytic GFLOPs of each timed phase for one image (post-processing is not counted)."""
    config, channels = model.config, model.backbone.out_channels
    trunk = backbone_flops(model, height, width) + input_projection_flops(config, channels, height, width)
    trunk += lateral_flops(config, channels, height, width)
    decoder = fpn_flops(config, channels, height, width) - lateral_flops(config, channels, height, width)
    decoder += decoder_flops(config, height, width)
    return {"trunk": trunk / 1e9, "encoder": encoder_gflops(config, height, width, depth),
            "decoder": decoder / 1e9, "post": 0.0}


def _print_throughput(results: dict, batch: int, layers: int, judge: str) -> None:
    """``judge``: ``wall`` or ``cpu``, the time whose ratio is held against the GFLOP ratio."""
    base = results[f"depth {layers}"]
    print(f"\nBatch {batch}: images/s, and time against depth {layers} next to the analytic whole-model GFLOP "
          f"ratio ('ok' = {judge} time ratio within {TOLERANCE:.0%} of it); encoder time ({judge} clock of the "
          f"phases) against depth {layers} next to the depth ratio.\n")
    print("| variant | mean depth | img/s (wall) | img/s (CPU) | time vs d6 (wall) | time vs d6 (CPU) | GFLOPs/img "
          "| GFLOPs vs d6 | whole model | encoder s/img | encoder vs d6 | depth ratio | encoder |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        n = row["images"]
        mean_depth = sum(row["depths"]) / n
        time_ratio, cpu_ratio = row["wall"] / base["wall"], row["cpu"] / base["cpu"]
        judged = cpu_ratio if judge == "cpu" else time_ratio
        flop_ratio = row["gflops"] / base["gflops"]
        encoder_ratio = row["phases"]["encoder"] / base["phases"]["encoder"]
        depth_ratio = mean_depth / layers
        model_ok = "ok" if abs(judged / flop_ratio - 1) <= TOLERANCE else "off"
        encoder_ok = "ok" if abs(encoder_ratio / depth_ratio - 1) <= TOLERANCE else "off"
        print(f"| {name} | {mean_depth:.2f} | {n / row['wall']:.3f} | {n / row['cpu']:.3f} | {time_ratio:.3f} "
              f"| {cpu_ratio:.3f} | {row['gflops'] / n:.1f} | {flop_ratio:.3f} | {model_ok} ({judged / flop_ratio - 1:+.1%}) "
              f"| {row['phases']['encoder'] / n:.3f} | {encoder_ratio:.3f} | {depth_ratio:.3f} "
              f"| {encoder_ok} ({encoder_ratio / depth_ratio - 1:+.1%}) |")


def _print_phases(results: dict, model, height: int, width: int) -> None:
    print("\nWhere the time goes (batch 1, seconds per image by the phases' clock; GFLOP/s = analytic GFLOPs / "
          "time; post-processing is not counted in GFLOPs):\n")
    print("| variant | trunk s | encoder s | decoder s | post s | trunk GFLOP/s | encoder GFLOP/s | decoder GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        if not name.startswith("depth"):
            continue
        n = row["images"]
        flops = _phase_gflops(model, height, width, row["depths"][0])
        per = {key: row["phases"].get(key, 0.0) / n for key in ("trunk", "encoder", "decoder", "post")}
        rates = [flops[key] / per[key] if per[key] else float("nan") for key in ("trunk", "encoder", "decoder")]
        print(f"| {name} | {per['trunk']:.3f} | {per['encoder']:.3f} | {per['decoder']:.3f} | {per['post']:.3f} "
              f"| {rates[0]:.0f} | {rates[1]:.0f} | {rates[2]:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--images", type=int, default=8, help="images per case (a multiple of the largest batch)")
    parser.add_argument("--batches", default="1,8", help="batch sizes, e.g. 1,8")
    parser.add_argument("--runs", type=int, default=1, help="timed rounds per case (median reported)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="phases in process CPU time instead of wall time (CPU only; see the docstring)")
    parser.add_argument("--small", action="store_true", help="32-channel heads: a smoke test, not a benchmark")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ecom2f.steps.predict.predictor import resolve_device

    model = _model(args.backbone, args.small).to(resolve_device(args.device))
    images = _images(args.images, args.height, args.width)
    exits = model.config.gate.exits
    gates = {f"budget {b}": _planted_gate(model, images, planted_depths(b, len(images), exits)) for b in BUDGETS}
    predictor = Predictor(model, gates, precision=args.precision, tasks=["panoptic"],
                          test_size=(min(args.height, args.width), max(args.height, args.width)))
    if args.cpu_clock:
        from ecom2f.steps.inference import DeviceClock

        predictor.clock = DeviceClock(predictor.device, time.process_time)
    layers = model.num_encoder_layers
    print(f"machine: {platform.machine()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {predictor.device}, {args.precision}, load {os.getloadavg()[0]:.1f}, "
          f"phases in {'CPU' if args.cpu_clock else 'wall'} time")
    print(f"model: {args.backbone}, images {args.height}x{args.width}, {args.images} per case, panoptic "
          f"post-processing, median of {args.runs} round(s)")
    predictor.predict(images[:1], depth=layers)  # warm-up
    for batch in (int(b) for b in args.batches.split(",")):
        cases = {f"depth {d}": (lambda d=d, b=batch: _run_batches(predictor, images, b, depth=d))
                 for d in range(1, layers + 1)}
        cases.update({name: (lambda name=name, b=batch: _run_batches(predictor, images, b, budget=name))
                      for name in gates})
        results = _time_cases(cases, args.runs)
        _print_throughput(results, batch, layers, "cpu" if args.cpu_clock else "wall")
        if batch == 1:
            _print_phases(results, model, args.height, args.width)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
