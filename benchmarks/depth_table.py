"""Step 2's costs: ``python -m benchmarks.depth_table [--config C] [--weights URI] [key=value ...]``.

Prints a table of
- the all-exits pass (``forward_all_exits``: backbone and encoder once, decoder per exit) vs one
  ``forward_raw`` per exit, on a batch of ``depth.batch_size`` images (median of ``--repeats``);
- the evaluator's throughput, i.e. what one Ray Data actor does per image (forward, per-exit
  loss and PQ, gate features), in images/s;
- ``derive_labels`` at COCO's 118,287 images x 5 exits.

Without ``--weights`` the parent has random weights: the forward costs do not depend on the
weights, but panoptic inference keeps almost no segments then, so the PQ part is cheaper than
with a trained parent (pass ``--weights <run>/parent/model_final.pth`` for that).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time

import numpy as np
import pandas as pd
import torch


def _median_seconds(fn, repeats: int, warm: bool = True) -> float:
    if warm:
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device_line() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def bench_passes(model, pixels: torch.Tensor, exits: list[int], repeats: int) -> dict:
    """Seconds of ``forward_all_exits`` and of ``len(exits)`` separate ``forward_raw`` calls.

    The two are timed alternately, and the ratio is the median of the per-round ratios, so a
    machine whose load changes during the run (shared cores) biases neither side.
    """
    sync = torch.cuda.synchronize if pixels.is_cuda else (lambda: None)

    def all_exits():
        with torch.no_grad():
            model.forward_all_exits(pixels, exits)
        sync()

    def separate():
        with torch.no_grad():
            for k in exits:
                model.forward_raw(pixels, k)
        sync()

    all_exits(), separate()  # warm-up
    rounds = []
    for _ in range(repeats):
        rounds.append((_median_seconds(all_exits, 0, warm=False), _median_seconds(separate, 0, warm=False)))
    return {"all_exits_s": statistics.median(a for a, _ in rounds), "separate_s": statistics.median(b for _, b in rounds),
            "ratio": statistics.median(a / b for a, b in rounds)}


def bench_labels(images: int = 118_287, exits=(2, 3, 4, 5, 6), repeats: int = 5) -> float:
    from ecom2f.steps.depth.labels import derive_labels

    rng = np.random.default_rng(0)
    exits = np.asarray(exits)
    table = pd.DataFrame({
        "image_id": np.repeat(np.arange(images), len(exits)), "exit": np.tile(exits, images).astype(np.int16),
        "pq": rng.random(images * len(exits)).astype(np.float32),
        "encoder_gflops": np.tile(exits * 5.0, images).astype(np.float32),
    })
    return _median_seconds(lambda: derive_labels(table, 0.01), repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo_cpu.yaml")
    parser.add_argument("--weights", help="parent state dict (local or s3://); default: random weights")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4, help="evaluator batches timed (after one warm-up)")
    parser.add_argument("--data-root", help="data.root (default: a temporary folder for synthetic data)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice); 1 is steadier on shared cores")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ecom2f import storage
    from ecom2f.config import load_config
    from ecom2f.modeling import build_model
    from ecom2f.steps.datasets import ensure_synthetic_data
    from ecom2f.steps.depth.stages import AllExitsEvaluator

    with tempfile.TemporaryDirectory(prefix="ecom2f-depth-bench-") as tmp:
        overrides = [f"storage.root={tmp}", f"data.root={args.data_root or tmp}", *args.overrides]
        config = load_config(args.config, overrides)
        ensure_synthetic_data(config)
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            buffer = io.BytesIO()
            torch.save(build_model(config.model).state_dict(), buffer)
            weights = os.path.join(tmp, "model_final.pth")
            storage.write_bytes(weights, buffer.getvalue())
        evaluator = AllExitsEvaluator(config.model_dump(mode="json"), weights)
        batch = config.depth.batch_size
        gate_exits = list(config.model.gate.exits)

        from ecom2f.data import collate_samples
        from ecom2f.modeling import normalize_batch

        samples = [evaluator.dataset[i % len(evaluator.dataset)] for i in range(batch)]
        collated = collate_samples(samples)
        pixels = normalize_batch(collated["images"], collated["padding_mask"], evaluator.model)
        passes = bench_passes(evaluator.model, pixels, gate_exits, args.repeats)
        all_passes = bench_passes(evaluator.model, pixels, evaluator.exits, args.repeats)

        indices = np.arange(len(evaluator.dataset))
        evaluator.evaluate(indices[:batch])  # warm-up
        start = time.perf_counter()
        for b in range(args.batches):
            chosen = indices[(b * batch + np.arange(batch)) % len(indices)]
            out = evaluator.evaluate(chosen)
        evaluate_s = time.perf_counter() - start
        label_s = bench_labels()
        from ecom2f.modeling.flops import all_exits_gflops, model_gflops

        height, width = pixels.shape[-2:]
        flop_ratio = all_exits_gflops(evaluator.model, height, width, gate_exits) / sum(
            model_gflops(evaluator.model, height, width, k) for k in gate_exits)

    size = tuple(pixels.shape[-2:])
    print(f"step 2 benchmark: {args.config}, {_device_line()}, batch {batch} at {size[0]}x{size[1]}, "
          f"{'random' if args.weights is None else 'trained'} weights")
    table = pd.DataFrame([
        {"measure": f"forward_all_exits, exits {gate_exits}", "value": passes["all_exits_s"] / batch * 1e3,
         "unit": "ms/img"},
        {"measure": f"{len(gate_exits)} x forward_raw", "value": passes["separate_s"] / batch * 1e3, "unit": "ms/img"},
        {"measure": "ratio all-exits / separate", "value": passes["ratio"], "unit": "x"},
        {"measure": "FLOP ratio all-exits / separate (analytic)", "value": flop_ratio, "unit": "x"},
        {"measure": f"ratio with exits {evaluator.exits}", "value": all_passes["ratio"],
         "unit": "x"},
        {"measure": f"evaluator (forward + {len(evaluator.exits)} losses + PQ + features)",
         "value": args.batches * batch / evaluate_s, "unit": "img/s per actor"},
        {"measure": "derive_labels, 118,287 x 5", "value": label_s * 1e3, "unit": "ms"},
    ])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"(last batch: mean pq {np.nanmean(out['pq']):.3f}, predicted segments {int(out['num_pred_segments'].sum())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
