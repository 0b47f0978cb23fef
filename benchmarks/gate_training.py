"""Time one gate trial at COCO scale: ``python -m benchmarks.gate_training [--images 118000 ...]``.

The table is synthetic (random features with a planted rule), the size of COCO train2017's
depth table: 118k images x 5 exits, C = 256 channels, a 4 x 4 stored grid. The trial runs on
one thread, as a Tune trial does (one CPU each).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ecom2f.steps.gate.data import GateTable, split_images
from ecom2f.steps.gate.train import GateTrial, train_gate


def synthetic_gate_table(images: int, channels: int = 256, grid_size: int = 4, seed: int = 0) -> GateTable:
    """A depth table whose best exit rises with feature 0 (PQ peaks there, falls by 0.1 per exit away)."""
    rng = np.random.default_rng(seed)
    exits = np.array([2, 3, 4, 5, 6], dtype=np.int64)
    difficulty = rng.uniform(size=images).astype(np.float32)
    grid = rng.normal(size=(images, grid_size * grid_size, channels)).astype(np.float32)
    grid[:, :, 0] += 4 * difficulty[:, None]
    best = np.minimum((difficulty * len(exits)).astype(np.int64), len(exits) - 1)
    pq = (0.7 - 0.1 * np.abs(np.arange(len(exits))[None] - best[:, None])).astype(np.float32)
    return GateTable(
        image_ids=np.arange(images, dtype=np.int64), exits=exits, pq=pq,
        gflops=np.tile(exits * 2.0, (images, 1)).astype(np.float32),
        mean=grid.mean(1), max=grid.max(1), grid=grid.reshape(images, -1), grid_size=grid_size,
        difficulty=difficulty,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=118_000)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30, help="gate.epochs (base config: 30)")
    parser.add_argument("--batch-size", type=int, default=256, help="gate.batch_size (base config: 256)")
    parser.add_argument("--designs", nargs="+", default=["mean:0", "mean_max:1", "grid2:2"],
                        help="pooling:hidden_layers, grid2/grid4 for the grid at 2x2 / 4x4")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="gate.precision (base config: auto = bf16 on CPUs with native bfloat16)")
    parser.add_argument("--patience", type=int, default=0, help="gate.patience (base config: 5; 0 = every epoch)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    table = synthetic_gate_table(args.images, args.channels)
    train_rows, val_rows = split_images(table.image_ids, 0.2, 0)
    print(f"table: {args.images} images x {len(table.exits)} exits, C={args.channels} "
          f"(built in {time.perf_counter() - start:.1f} s); {len(train_rows)} train, {len(val_rows)} validation; "
          f"{args.epochs} epochs at most, patience {args.patience}, batch {args.batch_size}, {args.precision}, "
          f"{args.threads} thread(s)")
    for design in args.designs:
        pooling, hidden = design.split(":")
        grid_size = int(pooling[4:]) if pooling.startswith("grid") else 2
        trial = GateTrial(pooling="grid" if pooling.startswith("grid") else pooling, grid_size=grid_size,
                          hidden_layers=int(hidden), width=args.width, epochs=args.epochs,
                          batch_size=args.batch_size, lr=1e-3, precision=args.precision, patience=args.patience)
        _, metrics = train_gate(table, train_rows, val_rows, trial)
        print(f"{design:>12}: one trial {metrics['seconds']:.1f} s, {metrics['epoch']} epochs "
              f"({metrics['seconds'] / metrics['epoch']:.2f} s/epoch); "
              f"validation PQ {metrics['val_pq']:.4f} vs oracle {metrics['oracle_pq']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
